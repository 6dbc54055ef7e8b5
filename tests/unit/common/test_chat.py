import pytest

from edgecloud.common.chat import PLAIN_STOP, ChatFormatter
from edgecloud.errors import ConfigError, InvalidRequestError
from edgecloud.types import ChatMessage

MSGS = [
    ChatMessage(role="system", content="You are terse."),
    ChatMessage(role="user", content="Hi"),
    ChatMessage(role="assistant", content="Hello."),
    ChatMessage(role="user", content="2+2?"),
]


def test_plain_template_is_the_documented_one() -> None:
    r = ChatFormatter("plain").render(MSGS)
    assert r.text == "You are terse.\n\nUser: Hi\nAssistant: Hello.\nUser: 2+2?\nAssistant:"
    assert r.stop == (PLAIN_STOP,)
    assert not r.special


def test_jinja_template_gets_bos_and_generation_prompt() -> None:
    tpl = (
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    r = ChatFormatter(tpl, bos_token="<bos>").render(MSGS[1:2])
    assert r.text == "<bos><user>Hi</user><assistant>"
    assert r.special


def test_template_raise_exception_becomes_invalid_request() -> None:
    tpl = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}x"
    with pytest.raises(InvalidRequestError, match="user first"):
        ChatFormatter(tpl).render(MSGS)


def test_sandbox_blocks_attribute_escapes() -> None:
    tpl = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(InvalidRequestError):
        ChatFormatter(tpl).render(MSGS)


def test_invalid_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Jinja2"):
        ChatFormatter("{% for %}")


def test_empty_messages() -> None:
    with pytest.raises(InvalidRequestError):
        ChatFormatter("plain").render([])

"""Quick start: stream an answer from the embedded device model, with confidence.

python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

from edgecloud import AsyncClient, Client

FEW_SHOT = (
    "Q: What is the capital of France?\nA: Paris\n"
    "Q: How many legs does a spider have?\nA: Eight\n"
    "Q: {question}\nA:"
)


def main() -> None:
    # The embedded Gemma 3 270M is a base model: few-shot Q/A prompts work best.
    with Client.local(n_threads=2) as client:
        for question in ("What is the capital of Japan?", "What colour is the sky on a clear day?"):
            stream = client.stream(FEW_SHOT.format(question=question), max_tokens=16, stop=["\n"])
            print(f"Q: {question}\nA:", end="", flush=True)
            for chunk in stream:
                print(chunk.text, end="", flush=True)
            r = stream.result
            print(
                f"   [{r.source}, {r.usage.completion_tokens} tokens, "
                f"mean logprob {r.confidence.mean_logprob:.2f}, "
                f"min {r.confidence.min_logprob:.2f}, "
                f"entropy {r.confidence.mean_entropy:.2f}]"
            )

    async def run_async() -> None:
        # open() loads the model in a worker thread: the event loop keeps running meanwhile.
        async with await AsyncClient.open(n_threads=2) as client:
            prompt = FEW_SHOT.format(question="What is 3 + 4?")
            texts = [chunk.text async for chunk in client.stream(prompt, max_tokens=8, stop=["\n"])]
            print("async:", "".join(texts).strip())

    asyncio.run(run_async())


if __name__ == "__main__":
    main()

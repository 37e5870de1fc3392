"""Serving: a continuous-batching multi-adapter engine, an OpenAI-compatible server, `lorakit generate`.

    from lorakit.infer.engine import Engine
    from lorakit.infer.sampling import SamplingParams
    engine = Engine(model, tokenizer, max_batch=16)
    for event in engine.stream(prompt_ids, "my-adapter", SamplingParams(max_tokens=64)):
        print(event.text, end="")
"""

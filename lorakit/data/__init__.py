"""The data pipeline: from raw books or JSONL to a clean, deduplicated, linted dataset.

``lorakit data prepare`` (`lorakit.data.prepare.prepare_dataset`) writes ``train.jsonl``,
``valid.jsonl``, ``test.jsonl`` and ``report.json`` into one folder;
``lorakit data lint`` (`lorakit.data.lint.lint_dataset`) re-checks a folder;
``lorakit data gutenberg`` (`lorakit.data.download.download_ebooks`) fetches ebooks by id.
Every split is read and written by `lorakit.data.schema` (`read_rows`, `write_rows`).

Sample schema (one JSON object per line)::

    text        str        the full string the model trains on: prompt + completion
    prompt      str        the prompt part ("" for the text format)
    completion  str        the part the loss is computed on (text[len(prompt):])
    input_ids   list[int]  tokens of text: ids(prompt) + ids(completion), each tokenized
                           on its own (so the boundary is exact), including any BOS the
                           tokenizer or chat template adds; len(input_ids) <= seq_len
    prompt_len  int        leading input_ids that are prompt, to mask from the loss
                           (0 for the text format); decode(input_ids[:prompt_len]) == prompt
    meta        object     book, author, title, translator, gutenberg_id, task, source
                           task: text | continue | scene | character | theme
                           (custom for prompt/completion pairs read from JSONL)
    messages    list       chat format only: [{"role", "content"}, ...], the last one
                           the assistant's answer (= the completion before the template)

Formats: ``text`` = plain passages for causal LM; ``instruct`` = an instruction, a blank
line, then the real passage and the EOS token; ``chat`` = the same rendered with the
tokenizer's chat template.

``lorakit data prepare --task classify`` (`lorakit.data.classify.prepare_classify`) writes the
same schema (prompt "", completion = text, prompt_len 0, input_ids without special tokens, meta
with task "classify" and the passage's index in its document) plus::

    task        str        "classify"
    label       str        the class name; report.json's "classes" lists them sorted, and
                           a class's id is its index there
"""

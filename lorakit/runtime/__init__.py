"""The runtime layer, under every other package: device, precision, threads, process memory.

`train`, `infer`, `eval`, `plan` and `quant` ask these modules about the machine and the process;
none of them asks the trainer (README "Layout").
"""

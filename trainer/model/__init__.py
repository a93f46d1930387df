"""The model wing: loading, the tiny preset, the model contract, sharded construction, the warm start, names.

Construction flows one way: `tiny` (the built-in preset) and `adapter` (the contract: decoder, blocks, head weight,
`check_head`; the one Qwen2 special case) know nothing of the rest; `load` reads a folder or builds the preset;
`warm_start` trains the preset's warm start from `load`'s model; `build` shards the policy and reference and fills
them from `load` and `warm_start`. `names` (parameter names as the HF model has them) and `attention` (packed
attention) stand alone. Nothing is re-exported here: import the module you need.
"""

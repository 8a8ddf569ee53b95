"""LoRA fine-tuning (PEFT) from JSONL: data validation (`data`), training (`trainer`,
`classify`, `causal`), the registration service (`service`), HTTP jobs (`jobs`) and the demo's
tiny causal LM (`demo`).

Registry-free below `service`: callers record data sets, adapters and lineage from the returned
results. Import from the submodules; this package imports nothing, so that commands which never
train (`constellation --help`, `keys create`, ...) do not load torch and PEFT.
"""

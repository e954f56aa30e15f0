"""GPT-2 language modelling: fine-tuning, a demo on built-in text, and perplexity evaluation.

Variants: `--config=configs/gpt2.py:VARIANT`; `:list` describes them. A local text instead of
WikiText-2: --config.data.name=text_file --config.data.path=FILE.
"""

import ml_collections

from megathread_jax.config_base import base_config, pick_variant

VARIANTS = {
    "finetune": "GPT-2 124M from Hugging Face's weights on WikiText-2 (or a local text file), 2 epochs",
    "demo": "a 4-layer byte-level GPT-2 from scratch on the Python docs (built in), about 5 minutes on a CPU",
    "eval_ppl": "sliding-window perplexity of --config.init_from (default: Hugging Face's GPT-2); evaluates only",
}
DEFAULT_VARIANT = "finetune"


def _model(name: str, **overrides) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.name = name
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16 (loss-scaled; parameters stay float32)
    m.attention_impl = "xla"  # xla | cudnn (GPU, bfloat16 or float16)
    m.remat = "none"  # none | full | dots
    m.embd_pdrop = 0.1
    m.resid_pdrop = 0.1
    m.attn_pdrop = 0.0  # > 0 leaves the fused attention kernels for a slower explicit softmax
    m.update(overrides)
    return m


def _text_data(**overrides) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.name = "hf_dataset"  # pydoc | text_file | hf_dataset
    d.path = ""  # text_file: a UTF-8 file
    d.hf_dataset = "Salesforce/wikitext"
    d.hf_config = "wikitext-2-raw-v1"
    d.train_split = "train"
    d.val_split = "validation"
    d.val_fraction = 0.05  # pydoc / text_file: the end of the text held out for validation
    d.tokenizer = "gpt2"  # a Hugging Face tokenizer name, or "bytes"
    d.cache_dir = "~/.cache/megathread_jax/text"
    d.seq_len = 1024
    d.eval_stride = 0  # 0: non-overlapping validation windows; < seq_len: sliding windows
    d.max_train_tokens = 0  # 0: all
    d.update(overrides)
    return d


def get_config(variant: str = DEFAULT_VARIANT) -> ml_collections.ConfigDict:
    variant = pick_variant(variant, VARIANTS, DEFAULT_VARIANT, "configs/gpt2.py")
    c = base_config(variant, "gpt2")
    c.task = "language_modelling"
    c.model = _model("gpt2")
    c.data = _text_data()
    c.init_from = "hf"  # Hugging Face's GPT-2 weights (converted once, cached), or a directory
    c.label_smoothing = 0.0
    c.num_epochs = 2
    c.batch_size = 8
    c.eval_batch_size = 8
    c.optim.learning_rate = 1e-4
    c.optim.warmup_epochs = 0.1
    c.optim.weight_decay = 0.1
    c.optim.b2 = 0.95
    c.optim.final_lr_fraction = 0.1
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    # the sample printed at the end of a run
    c.sample_prompt = "The"
    c.sample_tokens = 100
    c.sample_top_k = 40

    if variant == "demo":
        c.model = _model("gpt2", n_layer=4, n_head=5, n_embd=160, n_positions=128, embd_pdrop=0.0, resid_pdrop=0.0)
        c.data = _text_data(name="pydoc", tokenizer="bytes", seq_len=128)
        c.init_from = ""
        c.num_epochs = 5
        c.batch_size = 32
        c.eval_batch_size = 32
        c.optim.learning_rate = 2e-3
        c.optim.warmup_epochs = 0.2
        c.optim.final_lr_fraction = 0.05
        c.log_every_steps = 20
        c.checkpoint_every_steps = 0
        c.sample_prompt = "The for statement"
        c.sample_tokens = 200
        c.sample_top_k = 10
    if variant == "eval_ppl":
        c.num_epochs = 0  # evaluate only
        c.data.train_split = ""
        c.data.val_split = "test"
        c.data.val_fraction = 1.0  # text_file: evaluate the whole text
        c.data.eval_stride = 512
        c.sample_tokens = 0
    return c

"""Trained models leave glubench: Hugging Face export of every FFN variant in both blocks, glubench-sample,
lm-evaluation-harness on a local task, and the W&B hooks.

Every checkpoint is a few AdamW steps of a CI-size model saved by a Lightning Trainer (built once per session,
on first use), so biases, norm gains and embeddings all differ from their initial values.  Everything runs
offline: the tokenizers, the task YAML and its data are written here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glubench.core.errors import ConfigError, ExportError
from glubench.export.convert import HANDLED_KEYS, plan_export
from glubench.export.folder import EXPORT_FILE, export_folder
from glubench.nn.config import FFN_VARIANTS, ModelConfig
from glubench.train.module import LanguageModel

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
TEXT = 'def greet(name):\n    return f"Hello, {name}! Ça va? naïve café ☃"\n\n'
PROMPT = "def f(x):"  # 9 bytes: prompt + 20 new tokens stay within seq_len 32
BLOCKS = {"gpt2": {}, "llama": {"norm": "rmsnorm", "pos": "rope"}}
STOCK = {("gpt2", v) for v in ("relu", "gelu", "swish", "mish", "relu2")} | {
    ("llama", v) for v in ("glu", "bilinear", "reglu", "geglu", "swiglu", "mishglu")}
CASES = [(block, ffn, False, "bytes") for block in BLOCKS for ffn in FFN_VARIANTS] + [
    ("gpt2", "relu", True, "bytes"), ("llama", "swiglu", True, "bytes"), ("gpt2", "swiglu", True, "bytes"),
    ("llama", "relu", True, "bytes"), ("gpt2", "gelu", False, "bpe"), ("llama", "geglu", False, "gpt2")]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("Ġ", "a"), ("r", "e"), ("o", "n")]


def write_gpt2_files(folder: Path) -> None:
    """A small GPT-2-format BPE (``encoder.json`` + ``vocab.bpe``, 256 bytes + 8 merges + ``<|endoftext|>``), laid
    out as tiktoken's data-gym reader expects: byte ids in its order, printable bytes first."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    sym = bytes_to_unicode()
    order = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    order += [b for b in range(256) if b not in order]
    encoder = {sym[b]: i for i, b in enumerate(order)}
    for a, b in MERGES:
        encoder[a + b] = len(encoder)
    encoder["<|endoftext|>"] = len(encoder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder.json").write_text(json.dumps(encoder))
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))


def train_tiny(path: Path, data: dict, model: dict, steps: int = 3) -> Path:
    """``steps`` AdamW steps (lr 1e-2, no warmup) of a CI-size model, saved with the Trainer."""
    import lightning.pytorch as pl

    from glubench.data.datamodule import LMDataModule

    dm = LMDataModule(data, seq_len=model["seq_len"], num_batches=steps, seed=0)
    dm.setup()
    lm = LanguageModel(model={**model, "vocab_size": dm.splits.vocab_size}, optim={"lr": 1e-2, "warmup_steps": 1},
                       max_steps=steps)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(lm, datamodule=dm)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, compose_cfg):
    """``tiny_checkpoint(block, ffn, bias=False, tokenizer="bytes")``: the path of a trained checkpoint, made once."""
    from omegaconf import OmegaConf

    root = tmp_path_factory.mktemp("tiny-ckpts")
    cfg = compose_cfg(["experiment=ci"])
    base_model = {**OmegaConf.to_container(cfg.model, resolve=True), "init": "fan_in"}
    base_data = OmegaConf.to_container(cfg.data, resolve=True)
    write_gpt2_files(root / "gpt2-bpe")
    tokenizers = {"bytes": {}, "bpe": {"tokenizer": "bpe", "vocab_size": 320},
                  "gpt2": {"tokenizer": "gpt2", "tokenizer_file": str(root / "gpt2-bpe")}}
    made: dict[tuple, Path] = {}

    def settings(block: str, ffn: str, bias: bool = False, tokenizer: str = "bytes") -> tuple[dict, dict]:
        return {**base_data, **tokenizers[tokenizer]}, {**base_model, **BLOCKS[block], "ffn": ffn, "bias": bias}

    def make(block: str, ffn: str, bias: bool = False, tokenizer: str = "bytes") -> Path:
        key = (block, ffn, bias, tokenizer)
        if key not in made:
            made[key] = train_tiny(root / f"{block}-{ffn}-{bias}-{tokenizer}.ckpt", *settings(*key))
        return made[key]

    make.settings = settings  # (data, model) of a case, to train it differently
    return make


def export_ckpt(ckpt: Path, out: Path, **kw) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return export_folder(state["hyper_parameters"], state["datamodule_hyper_parameters"], state["state_dict"], out,
                         **kw)


def glubench_tokenizer(ckpt: Path):
    from glubench.data.cache import load_tokenizer

    return load_tokenizer(torch.load(ckpt, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"])


def sample_cli(compose_cfg, path, *overrides):
    from glubench.cli.sample import generate_samples

    generate_samples(compose_cfg([f"ckpt_path={path}", *overrides], config_name="sample"))
    return json.loads(Path("samples.json").read_text())


@pytest.mark.parametrize("block,ffn,bias,tokenizer", CASES, ids=lambda v: str(v))
def test_export_loads_in_transformers_with_the_same_logits_tokens_and_greedy_text(
        block, ffn, bias, tokenizer, tiny_checkpoint, compose_cfg, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)  # glubench-sample writes samples.json to the current dir outside Hydra
    ckpt = tiny_checkpoint(block, ffn, bias, tokenizer)
    record = export_ckpt(ckpt, tmp_path / "hf")
    stock = (block, ffn) in STOCK
    assert record["remote_code"] is not stock and (tmp_path / "hf" / "modeling_glubench.py").exists() is not stock
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=not stock).eval()
    if stock:  # a stock class, loaded without remote code
        assert type(model).__name__ == ("GPT2LMHeadModel" if block == "gpt2" else "LlamaForCausalLM")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=not stock)
    ours = glubench_tokenizer(ckpt)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == ours.encode(TEXT) and tok.decode(ids) == TEXT

    lm = LanguageModel.load_from_checkpoint(ckpt, weights_only=True).eval()
    windows = torch.tensor(ours.encode(TEXT * 4)[:64]).view(2, 32)  # (B, T) = (2, seq_len)
    with torch.no_grad():
        diff = (model(windows).logits - lm(windows)).abs().max().item()
    assert diff <= 1e-5, f"max |logit diff| {diff:.3g}"

    prompt = torch.tensor([ours.encode(PROMPT)])
    with torch.no_grad():
        hf_ids = model.generate(prompt, max_new_tokens=20, do_sample=False)[0].tolist()
    ours_ids = sample_cli(compose_cfg, ckpt, "temperature=0", "max_new_tokens=20", "num_samples=1",
                          f"prompt='{PROMPT}'")["token_ids"][0]
    assert hf_ids == ours_ids and len(ours_ids) == prompt.shape[1] + 20


def test_stock_classes_are_chosen_exactly_where_they_compute_the_model():
    for block, extra in BLOCKS.items():
        for ffn in FFN_VARIANTS:
            plan = plan_export(ModelConfig(ffn=ffn, **extra))
            assert (plan.arch != "glubench") is ((block, ffn) in STOCK), (block, ffn)
    # the blocks mixed (RMSNorm with learned positions, LayerNorm with RoPE) have no stock class
    assert plan_export(ModelConfig(ffn="relu", norm="rmsnorm")).arch == "glubench"
    assert plan_export(ModelConfig(ffn="swiglu", pos="rope")).arch == "glubench"
    # the export handles every model key there is: a new one must be added to HANDLED_KEYS or refused
    assert HANDLED_KEYS == {f for f in ModelConfig.__dataclass_fields__ if not f.startswith("_")}


def test_an_unrepresentable_checkpoint_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("gpt2", "relu")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["model"]["qk_norm"] = True  # a setting from a newer glubench
    torch.save(state, tmp_path / "newer.ckpt")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "glubench.cli.export", f"ckpt_path={tmp_path / 'newer.ckpt'}",
                           f"out_dir={tmp_path / 'hf'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not (tmp_path / "hf").exists()
    assert proc.stderr.strip().splitlines() == [
        "glubench-export: error: model.qk_norm=True: glubench-export cannot represent this setting exactly "
        f"(it handles {', '.join(sorted(HANDLED_KEYS))})"]


def test_a_conversion_that_changes_the_logits_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    import glubench.export.folder as folder

    real = folder.hf_weights

    def off_by_a_little(sd, cfg, plan):  # swap two rows of one query projection: close, not exact
        out = real(sd, cfg, plan)
        w = out["model.layers.0.self_attn.q_proj.weight"]
        out["model.layers.0.self_attn.q_proj.weight"] = w[[1, 0, *range(2, w.shape[0])]]
        return out

    monkeypatch.setattr(folder, "hf_weights", off_by_a_little)
    with pytest.raises(ExportError, match="logits differ from glubench's by"):
        export_ckpt(tiny_checkpoint("llama", "swiglu"), tmp_path / "hf")
    assert not any(tmp_path.iterdir())  # neither the folder nor its partial copy


def test_export_and_sample_commands(tiny_checkpoint, compose_cfg, tmp_path, monkeypatch):
    ckpt = tiny_checkpoint("gpt2", "swiglu")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    exp = subprocess.run([sys.executable, "-m", "glubench.cli.export", f"ckpt_path={ckpt}",
                          f"hydra.run.dir={tmp_path / 'e'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert exp.returncode == 0, exp.stderr[-2000:]
    folder = tmp_path / "e" / "model"
    assert json.loads((folder / EXPORT_FILE).read_text())["max_abs_logit_diff"] <= 1e-5
    args = [sys.executable, "-m", "glubench.cli.sample", f"ckpt_path={folder}", "max_new_tokens=8", "num_samples=2",
            "top_k=5", "trust_remote_code=true", f"hydra.run.dir={tmp_path / 's'}"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    samples = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert done.stdout.count("--- sample ") == 2 and all(len(t) == 1 + 8 for t in samples["token_ids"])
    bad = subprocess.run([*args[:3], f"ckpt_path={ckpt}", "temperature=-1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "glubench-sample: error: temperature=-1.0 must be >= 0 (0: greedy)"
    monkeypatch.chdir(tmp_path)  # running an export's own code needs the user's consent
    with pytest.raises(ConfigError, match=r"modeling_glubench.py\); add trust_remote_code=true"):
        sample_cli(compose_cfg, folder)


def test_sampling_crops_to_seq_len_and_is_reproducible(tiny_checkpoint, compose_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tiny_checkpoint("llama", "swiglu")
    # 60 new tokens after a 9-token prompt run past seq_len 32: each step sees the last 32 tokens only
    args = ("max_new_tokens=60", "num_samples=2", "seed=3", "top_k=20", f"prompt='{PROMPT}'")
    a, b = sample_cli(compose_cfg, ckpt, *args), sample_cli(compose_cfg, ckpt, *args)
    assert a["token_ids"] == b["token_ids"] and all(len(t) == 9 + 60 for t in a["token_ids"])
    assert a["token_ids"][0] != a["token_ids"][1]  # two draws, not one repeated
    lm = LanguageModel.load_from_checkpoint(ckpt, weights_only=True).eval()
    greedy = sample_cli(compose_cfg, ckpt, "temperature=0", "max_new_tokens=40", "num_samples=1",
                        f"prompt='{PROMPT}'")["token_ids"][0]
    ids = list(greedy[:9])
    with torch.no_grad():  # the same greedy decode, by hand, with an explicit window of the last 32 tokens
        for _ in range(40):
            ids.append(int(lm(torch.tensor([ids[-32:]]))[0, -1].argmax()))
    assert greedy == ids


def test_export_with_wandb_logs_the_folder_as_a_model_artifact(tiny_checkpoint, compose_cfg, tmp_path, monkeypatch,
                                                               wandb_records):
    from glubench.cli.export import export

    monkeypatch.chdir(tmp_path)  # outside Hydra the run dir (and W&B's folder) is the current dir
    ckpt = tiny_checkpoint("gpt2", "relu")
    export(compose_cfg([f"ckpt_path={ckpt}", "logger=wandb"], config_name="export"))
    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    records = list(wandb_records(next(run_dir.glob("*.wandb"))))
    arts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    kinds = sorted({r.WhichOneof("record_type") for r in records})
    assert arts and {(a.name, a.type) for a in arts} == {("hf-relu", "model")}, (kinds, list(tmp_path.rglob("*")))
    names = {Path(e.path).name for a in arts for e in a.manifest.contents}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names


def write_task(folder: Path, n_items: int = 32) -> str:
    """A local lm-evaluation-harness task: which of 4 orderings of the next 8 characters of a 16-character passage of
    Python's documentation is the true one (3 shuffles); the YAML and a JSONL file in ``folder``."""
    import random
    from pydoc_data.topics import topics

    rng = random.Random(0)
    text = " ".join(" ".join(topics[k].split()) for k in sorted(topics))
    items = []
    while len(items) < n_items:
        start = rng.randrange(len(text) - 24)
        true = text[start + 16:start + 24]
        others = {"".join(rng.sample(true, len(true))) for _ in range(20)} - {true}
        if len(others) < 3:
            continue
        label, others = rng.randrange(4), sorted(others)[:3]
        items.append({"context": text[start:start + 16], "label": label,
                      "choices": [*others[:label], true, *others[label:]]})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (folder / "glubench_continuation.yaml").write_text(
        "task: glubench_continuation\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'items.jsonl'}\n  cache_dir: {folder / 'hf-cache'}\n"
        "test_split: test\noutput_type: multiple_choice\ntarget_delimiter: ''\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n")
    return "glubench_continuation"


def accuracy_by_hand(ckpt: Path, items_file: Path) -> float:
    """The task's accuracy from glubench's own model: the choice with the largest summed log-probability."""
    lm = LanguageModel.load_from_checkpoint(ckpt, weights_only=True).eval()
    tok = glubench_tokenizer(ckpt)
    right = []
    for line in items_file.read_text().splitlines():
        item = json.loads(line)
        ctx = tok.encode(item["context"])
        scores = []
        for choice in item["choices"]:
            ids = ctx + tok.encode(choice)
            with torch.no_grad():
                logp = torch.log_softmax(lm(torch.tensor([ids[:-1]]))[0].double(), dim=-1)  # (T-1, V)
            scores.append(sum(float(logp[i - 1, ids[i]]) for i in range(len(ctx), len(ids))))
        right.append(max(range(4), key=scores.__getitem__) == item["label"])
    return sum(right) / len(right)


@pytest.mark.slow
def test_glubench_eval_tasks_and_plain_lm_eval_give_the_same_accuracy(tiny_checkpoint, compose_cfg, tmp_path,
                                                                      monkeypatch):
    pytest.importorskip("lm_eval")
    from glubench.train.evaluate import evaluate

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.chdir(tmp_path)
    # 150 steps: above chance on the task.  SwiGLU in the GPT-2-style block: the harness loads remote code
    ckpt = train_tiny(tmp_path / "swiglu.ckpt", *tiny_checkpoint.settings("gpt2", "swiglu"), steps=150)
    task = write_task(tmp_path / "tasks")
    include = f"harness.include_path={tmp_path / 'tasks'}"
    with pytest.raises(ConfigError, match=r"^tasks: nope not known to lm-evaluation-harness"):  # before any scoring
        evaluate(compose_cfg([f"ckpt_path={ckpt}", f"tasks=[{task},nope]", include], config_name="eval"))
    assert not (tmp_path / "model").exists()
    record = evaluate(compose_cfg([f"ckpt_path={ckpt}", f"tasks=[{task}]", include], config_name="eval"))
    ours = record["tasks"][task]["acc"]
    assert json.loads((tmp_path / "lm_eval.json").read_text())["results"][task]["acc,none"] == ours
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
         f"pretrained={tmp_path / 'model'},trust_remote_code=True", "--tasks", task,
         "--include_path", str(tmp_path / "tasks"), "--device", "cpu", "--output_path", str(tmp_path / "plain")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads(next((tmp_path / "plain").rglob("results_*.json")).read_text())["results"][task]["acc,none"]
    by_hand = accuracy_by_hand(ckpt, tmp_path / "tasks" / "items.jsonl")
    print(f"\nlocal task accuracy: glubench-eval {ours}, lm_eval {plain}, by hand {by_hand}")
    assert ours == plain == by_hand and ours > 0.5  # chance is 0.25


def test_wandb_samples_table_and_checkpoint_artifacts_leave_the_run_unchanged(tmp_path, ci_run, wandb_history,
                                                                              wandb_records):
    short = ("trainer.max_steps=10", "trainer.val_check_interval=5")
    plain = ci_run(tmp_path / "plain", *short)
    sampled = ci_run(tmp_path / "sampled", *short, "logger=wandb", "logger.wandb.log_model=true",
                     "callbacks.samples.enabled=true", "callbacks.samples.max_new_tokens=8",
                     "callbacks.samples.prompt='def '")
    assert sampled.val_loss == plain.val_loss  # its own generator: the run's random streams are untouched
    run_dir = next((tmp_path / "sampled" / "wandb").glob("offline-run-*"))
    wandb_file = next(run_dir.glob("*.wandb"))
    tables = [r for r in wandb_history(run_dir) if "samples/_type" in r]  # W&B flattens the table reference
    assert [r["trainer/global_step"] for r in tables] == [5, 10]
    assert all((r["samples/nrows"], r["samples/ncols"]) == (2, 3) for r in tables)
    last = json.loads((run_dir / "files" / tables[-1]["samples/path"]).read_text())
    assert last["columns"] == ["step", "sample", "text"] and [row[:2] for row in last["data"]] == [[10, 0], [10, 1]]
    assert all(row[2].startswith("def ") and len(row[2].encode()) >= 4 for row in last["data"])
    # logger.wandb.log_model=true (Lightning's): the checkpoints become W&B model artifacts
    arts = {(r.artifact.type, r.artifact.name.split("-")[0]) for r in wandb_records(wandb_file)
            if r.WhichOneof("record_type") == "artifact"}
    assert ("model", "model") in arts

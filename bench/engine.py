"""Engine throughput against the device's ceilings and Hugging Face `generate`.

    python bench/engine.py --shape llama3-8b            # on a GPU
    python bench/engine.py --shape tiny --device cpu    # smoke test

Measures, in one run: the two ceilings (device-to-device copy bandwidth,
bf16 matmul rate); Hugging Face `generate` at batch 1/16/64 (prompt 512,
128 new tokens, random weights); Tandem's engine on the same shape with
random weights: prefill and decode tokens/s at batch 1/16/64, decode at
context ~1k against the floor (weights + KV bytes / copy bandwidth), prefill
of a 4096-token prompt against the matmul rate, and device memory over a
long decode run. Prints a table and writes JSON (device, versions, figures).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tandem.sampling import SamplingParams
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine

SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 128000,
        "eos_token_id": 128001, "hidden_act": "silu",
    },
    "tiny": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1024,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 0,
        "eos_token_id": 1, "hidden_act": "silu",
    },
}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceilings(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    n = 1 << 30  # 1 GiB per buffer, far beyond L2
    src = torch.randn(n // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    copy_bw = 2 * n / times[len(times) // 2]
    del src, dst
    m = 8192
    a = torch.randn(m, m, dtype=torch.bfloat16, device=device)
    b = torch.randn(m, m, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    flops = 2 * m**3 / times[len(times) // 2]
    del a, b
    torch.cuda.empty_cache()
    return {"copy_bytes_per_s": copy_bw, "bf16_matmul_flops": flops}


def write_model_dir(shape: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"tandem-bench-{shape}-"))
    (d / "config.json").write_text(json.dumps(SHAPES[shape]))
    return d


def param_counts(cfg: dict[str, Any]) -> dict[str, int]:
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * inter + 2 * h
    body = layers * per_layer + h
    lm_head = cfg["vocab_size"] * h
    return {"body": body, "lm_head": lm_head, "embed": cfg["vocab_size"] * h, "total": body + lm_head + cfg["vocab_size"] * h}


def hf_generate(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype, batches: list[int], prompt: int, new: int) -> list[dict[str, float]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(hf_cfg).eval()
    torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = None
    rows = []
    for b in batches:
        ids = torch.randint(10, cfg["vocab_size"], (b, prompt), device=device)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            model.generate(ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=2, do_sample=False, pad_token_id=0)
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
            sync(device)
        dt = time.perf_counter() - t0
        assert out.shape[1] == prompt + new
        rows.append({"batch": b, "prompt": prompt, "new_tokens": new, "seconds": dt, "gen_tokens_per_s": b * new / dt})
        print(f"  hf generate batch {b}: {b * new / dt:.1f} tok/s", flush=True)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def run_batch(engine: Engine, batch: int, prompt: int, new: int, vocab: int, tag: str) -> dict[str, float]:
    g = torch.Generator().manual_seed(batch * 1000 + prompt)
    p = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"{tag}-{i}", torch.randint(10, vocab, (prompt,), generator=g).tolist(), p)
    t_pre = t_dec = 0.0
    n_pre = n_dec = steps_dec = 0
    ctx_sum = 0.0
    produced = 0
    t0 = time.perf_counter()
    while engine.has_work():
        outs = engine.step()
        produced += sum(len(o.new_token_ids) for o in outs)
        st = engine.last_step
        if st is None:
            continue
        if st.phase == "prefill":
            t_pre += st.seconds
            n_pre += st.num_tokens
        else:
            t_dec += st.seconds
            n_dec += st.num_tokens
            steps_dec += 1
            ctx_sum += prompt + (steps_dec + 0.5)
    total = time.perf_counter() - t0
    assert produced == batch * new, (produced, batch * new)
    return {
        "batch": batch, "prompt": prompt, "new_tokens": new, "seconds": total,
        "gen_tokens_per_s": batch * new / total,
        "prefill_tokens_per_s": n_pre / t_pre if t_pre else 0.0,
        "decode_tokens_per_s": n_dec / t_dec if t_dec else 0.0,
        "decode_step_s": t_dec / steps_dec if steps_dec else 0.0,
        "decode_mean_context": ctx_sum / steps_dec if steps_dec else 0.0,
        "prefill_seconds": t_pre,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--model", default=None, help="a Hugging Face folder (real weights) instead of --shape")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--long-decode", type=int, default=512, help="tokens of the memory-growth run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = json.loads((Path(args.model) / "config.json").read_text()) if args.model else SHAPES[args.shape]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype_bytes = torch.finfo(dtype).bits // 8
    batches = [int(b) for b in args.batches.split(",")]
    import transformers
    import triton  # type: ignore[import-untyped]

    result: dict[str, Any] = {
        "bench": "engine", "shape": args.model or args.shape, "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
        "command": " ".join(sys.argv),
    }  # fmt: skip
    out_path = Path(args.out) if args.out else (
        Path(os.environ["OUT"]) / "engine.json" if os.environ.get("OUT")
        else Path(__file__).parent / "results" / f"engine-{args.shape}-{device.type}.json"
    )

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))

    result["ceilings"] = ceilings(device)
    print("ceilings:", result["ceilings"], flush=True)
    save()
    if not args.skip_hf:
        result["hf_generate"] = hf_generate(cfg, device, dtype, batches, args.prompt, args.new)
        save()

    counts = param_counts(cfg)
    model_dir = Path(args.model) if args.model else write_model_dir(args.shape)
    engine = Engine(EngineConfig(
        str(model_dir), dtype=str(dtype).removeprefix("torch."), device=args.device,
        load_format="safetensors" if args.model else "dummy",
        max_model_len=8192, max_num_batched_tokens=8192, max_num_seqs=max(batches),
        cuda_graph_max_batch=max(batches), enable_prefix_caching=False,
    ))  # fmt: skip
    vocab = cfg["vocab_size"]
    rows = []
    for b in batches:
        # Same shapes as the timed run, so Triton compilation stays out of the figures.
        run_batch(engine, b, args.prompt, 2, vocab, f"warm{b}")
        rows.append(run_batch(engine, b, args.prompt, args.new, vocab, f"b{b}"))
        print(f"  tandem batch {b}: gen {rows[-1]['gen_tokens_per_s']:.1f} tok/s, decode {rows[-1]['decode_tokens_per_s']:.1f} tok/s", flush=True)
    result["tandem"] = rows
    save()

    # Decode at context ~1k against the floors.
    kv_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * dtype_bytes
    weight_bytes = (counts["body"] + counts["lm_head"]) * dtype_bytes  # the embedding table is gathered, not read
    floors = []
    for b in (1, max(batches)):
        run_batch(engine, b, 1024, 2, vocab, f"warm1k-{b}")
        row = run_batch(engine, b, 1024, 128, vocab, f"ctx1k-{b}")
        step_bytes = weight_bytes + b * row["decode_mean_context"] * kv_per_token
        row["floor_bytes_per_step"] = step_bytes
        if result["ceilings"]:
            floor_s = step_bytes / result["ceilings"]["copy_bytes_per_s"]
            row["floor_step_s"] = floor_s
            row["fraction_of_floor"] = floor_s / row["decode_step_s"]
        floors.append(row)
    result["decode_vs_floor"] = floors
    save()

    # Prefill of one 4096-token prompt against the matmul rate.
    run_batch(engine, 1, 4096, 1, vocab, "warm4k")
    pre = run_batch(engine, 1, 4096, 1, vocab, "prefill4k")
    t = 4096
    attn_flops = cfg["num_hidden_layers"] * 2 * t * t * cfg["num_attention_heads"] * cfg["head_dim"]  # causal QK^T + PV
    flops = 2 * (counts["body"]) * t + 2 * counts["lm_head"] + attn_flops
    pre["flops"] = flops
    if result["ceilings"]:
        pre["fraction_of_matmul"] = flops / pre["prefill_seconds"] / result["ceilings"]["bf16_matmul_flops"]
    result["prefill_4k"] = pre
    save()

    # Memory: weights + KV within the budget; no growth over a long decode run.
    if device.type == "cuda":
        before = torch.cuda.memory_allocated()
        long = run_batch(engine, max(batches), 256, args.long_decode, vocab, "long")
        after = torch.cuda.memory_allocated()
        result["memory"] = {
            "weights_bytes": sum(p.numel() * p.element_size() for p in engine.runner.model.parameters()),
            "kv_cache_bytes": engine.runner.kv_cache_bytes,
            "allocated_before_long_run": before, "allocated_after_long_run": after,
            "long_run_tokens": long["new_tokens"] * long["batch"],
            "max_allocated": torch.cuda.max_memory_allocated(),
            "device_total": torch.cuda.get_device_properties(0).total_memory,
        }  # fmt: skip
        save()
    print_table(result)
    print(f"wrote {out_path}")
    return 0


def print_table(r: dict[str, Any]) -> None:
    hf = {row["batch"]: row for row in r.get("hf_generate", [])}
    print(f"\nEngine benchmark: {r['shape']} {r['dtype']} on {r['device']}")
    if r["ceilings"]:
        c = r["ceilings"]
        print(f"ceilings: copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {c['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s")
    print(f"{'batch':>5} {'prompt':>6} {'gen tok/s':>10} {'HF tok/s':>9} {'ratio':>6} {'prefill tok/s':>13} {'decode tok/s':>12}")
    for row in r["tandem"]:
        h = hf.get(row["batch"])
        ratio = f"{row['gen_tokens_per_s'] / h['gen_tokens_per_s']:.1f}x" if h else "-"
        hf_s = f"{h['gen_tokens_per_s']:.1f}" if h else "-"
        print(f"{row['batch']:>5} {row['prompt']:>6} {row['gen_tokens_per_s']:>10.1f} {hf_s:>9} {ratio:>6} {row['prefill_tokens_per_s']:>13.0f} {row['decode_tokens_per_s']:>12.1f}")
    for row in r["decode_vs_floor"]:
        frac = f"{row['fraction_of_floor']:.0%}" if "fraction_of_floor" in row else "-"
        print(f"decode batch {row['batch']} ctx ~{row['decode_mean_context']:.0f}: step {row['decode_step_s'] * 1e3:.2f} ms, {frac} of the bandwidth floor")
    p = r["prefill_4k"]
    frac = f", {p['fraction_of_matmul']:.0%} of matmul rate" if "fraction_of_matmul" in p else ""
    print(f"prefill 4096 tokens: {p['prefill_seconds'] * 1e3:.1f} ms{frac}")
    if "memory" in r:
        m = r["memory"]
        print(f"memory: weights {m['weights_bytes'] / 2**30:.1f} GiB + KV {m['kv_cache_bytes'] / 2**30:.1f} GiB; allocated {m['allocated_before_long_run'] / 2**30:.2f} -> {m['allocated_after_long_run'] / 2**30:.2f} GiB over {m['long_run_tokens']} tokens")


if __name__ == "__main__":
    sys.exit(main())

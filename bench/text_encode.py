"""Prompt encoding throughput: our text conditioner vs transformers, CLIP-L and bigG sizes.

    python bench/text_encode.py [--batch 8] [--repeats 3] [--quick] [--merges PATH]

Random weights (no downloads) at the released sizes: CLIP-L (SD 1.x; 768 wide, 12 layers)
and OpenCLIP ViT-bigG (SDXL's second tower; 1280 wide, 32 layers). Both sides get the
same weights (ours through sgm.io.convert_text + build_conditioner, i.e. the single-file
path) and do the whole job: tokenize the prompts, then run the tower (transformers with
its fast tokenizer and ``output_hidden_states`` for bigG's penultimate layer), under
``torch.inference_mode`` with the machine's default thread count: transformers fp32, ours
fp32 and ours in the ``sgm.devices`` default dtype (bf16 on CPUs with AMX/AVX512-BF16).
``--quick`` uses 4 layers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgm.io.convert_text import text_diffusers_to_original  # noqa: E402
from sgm.devices import default_dtype  # noqa: E402
from sgm.text.encoders import build_conditioner  # noqa: E402
from sgm.text.tokenizer import BPE_FILE_NAME, ClipTokenizer, find_clip_merges  # noqa: E402

PROMPTS = [
    "a photo of an astronaut riding a horse on mars, highly detailed, 8k",
    "a watercolor painting of a fox in a snowy forest at dawn",
    "portrait of an old fisherman, dramatic lighting, film grain",
    "isometric pixel art of a tiny island with a lighthouse",
    "Café terrace at night, oil on canvas, in the style of van Gogh",
    "a bowl of ramen, steam rising, macro photography, bokeh",
    "cyberpunk city street in the rain, neon signs, reflections",
    "a cute robot reading a book in a cozy library, 3d render",
]


def best_seconds(fns: list, repeats: int) -> list[float]:
    """Best wall time of each function; rounds interleave them so load drift hits all alike."""
    for fn in fns:
        fn()  # warm-up (allocations, kernel selection, tokenizer memo)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def reference_tokenizer(ours: ClipTokenizer, folder: Path, pad: str | None):
    import transformers

    (folder / "vocab.json").write_text(json.dumps(ours.vocab), encoding="utf-8")
    merges = sorted(ours.ranks, key=ours.ranks.__getitem__)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    extra = {"pad_token": pad} if pad else {}
    return transformers.CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, **extra)


def run_case(name: str, *, width: int, layers: int, projection: int | None, act: str, family: str,
             ours_tok: ClipTokenizer, folder: Path, batch: int, repeats: int) -> dict[str, object]:
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=width // 64, max_position_embeddings=77, hidden_act=act,
        projection_dim=projection or width, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    torch.manual_seed(0)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    reference = cls(config).eval()
    te1, te2 = (None, reference.state_dict()) if projection else (reference.state_dict(), None)
    state_dict = text_diffusers_to_original(family, te1, te2)
    ours = build_conditioner(state_dict, family, {}, model_path=None, device="cpu", dtype=torch.float32,
                             tokenizer=ours_tok)
    assert ours is not None
    tok = reference_tokenizer(ours_tok, folder, "!" if projection else None)
    prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]

    def run_ours() -> torch.Tensor:
        return ours.encode_text(prompts)[0]

    def run_reference() -> torch.Tensor:
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = reference(ids, output_hidden_states=projection is not None)
        return out.hidden_states[-2] if projection else out.last_hidden_state

    default = default_dtype("cpu")
    ours_default = build_conditioner(state_dict, family, {}, model_path=None, device="cpu", dtype=default,
                                     tokenizer=ours_tok)
    assert ours_default is not None

    def run_default() -> torch.Tensor:
        return ours_default.encode_text(prompts)[0]

    with torch.inference_mode():
        ours_s, default_s, reference_s = best_seconds([run_ours, run_default, run_reference], repeats)
        a, b, c = run_ours(), run_reference(), run_default().float()
    error = float((a - b).abs().max() / b.abs().max())
    default_error = float((c - b).abs().max() / b.abs().max())
    return {"model": name, "ours": batch / ours_s, "default": batch / default_s, "dtype": str(default).split(".")[1],
            "transformers": batch / reference_s, "ratio": reference_s / ours_s, "default_ratio": reference_s / default_s,
            "error": error, "default_error": default_error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 layers instead of 12 / 32")
    parser.add_argument("--merges", type=Path, default=None, help=f"path to {BPE_FILE_NAME}")
    args = parser.parse_args()
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "clip" / BPE_FILE_NAME
    merges = args.merges or (shared if shared.is_file() else find_clip_merges())
    ours_tok = ClipTokenizer.from_bpe_file(merges) if merges.is_file() else ClipTokenizer.from_folder(merges)
    cases = [
        ("CLIP-L (SD1)", 768, 4 if args.quick else 12, None, "quick_gelu", "sd1"),
        ("bigG (SDXL)", 1280, 4 if args.quick else 32, 1280, "gelu", "sdxl-refiner"),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, width, layers, projection, act, family in cases:
            rows.append(run_case(name, width=width, layers=layers, projection=projection, act=act, family=family,
                                 ours_tok=ours_tok, folder=Path(tmp), batch=args.batch, repeats=args.repeats))
    print(f"threads: {torch.get_num_threads()}, batch {args.batch}, best of {args.repeats}; "
          "prompts/s (speed-up vs transformers fp32) [max rel diff vs transformers fp32]")
    print(f"{'model':<14} {'transformers fp32':>18} {'ours fp32':>26} {'ours default':>34}")
    for r in rows:
        ours = f"{r['ours']:.2f} ({r['ratio']:.2f}x) [{r['error']:.0e}]"
        default = f"{r['default']:.2f} {r['dtype']} ({r['default_ratio']:.2f}x) [{r['default_error']:.0e}]"
        print(f"{r['model']:<14} {r['transformers']:>18.2f} {ours:>26} {default:>34}")


if __name__ == "__main__":
    main()

"""Prompt encoding throughput: our text conditioner vs transformers, CLIP-L and bigG sizes.

    python bench/text_encode.py [--batch 8] [--repeats 3] [--quick] [--merges PATH]

Random weights (no downloads) at the released sizes: CLIP-L (SD 1.x; 768 wide, 12 layers)
and OpenCLIP ViT-bigG (SDXL's second tower; 1280 wide, 32 layers). Both sides get the
same weights (ours through sgm.convert_text + build_conditioner, i.e. the single-file
path) and do the whole job: tokenize the prompts, then run the tower (transformers with
its fast tokenizer and ``output_hidden_states`` for bigG's penultimate layer). fp32,
``torch.inference_mode``, the machine's default thread count. ``--quick`` uses 4 layers.
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

from sgm.convert_text import text_diffusers_to_original  # noqa: E402
from sgm.text_encoders import build_conditioner  # noqa: E402
from sgm.tokenizer import BPE_FILE_NAME, ClipTokenizer, find_clip_merges  # noqa: E402

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


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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

    with torch.inference_mode():
        ours_s = best_seconds(run_ours, repeats)
        reference_s = best_seconds(run_reference, repeats)
        a, b = run_ours(), run_reference()
    error = float((a - b).abs().max() / b.abs().max())
    return {"model": name, "batch": batch, "ours": batch / ours_s, "transformers": batch / reference_s,
            "ratio": reference_s / ours_s, "error": error}


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
    print(f"threads: {torch.get_num_threads()}, fp32, batch {args.batch}, best of {args.repeats}")
    print(f"{'model':<14} {'ours prompts/s':>15} {'transformers prompts/s':>23} {'ours speed-up':>14} {'max rel diff':>13}")
    for r in rows:
        print(f"{r['model']:<14} {r['ours']:>15.2f} {r['transformers']:>23.2f} {r['ratio']:>13.2f}x {r['error']:>13.1e}")


if __name__ == "__main__":
    main()

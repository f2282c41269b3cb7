"""The generation stage's own cost: variants per second through `generate_variants` (sources, keys,
reading crops, the model, PNG writes, the variants table, registering the batch) against the bare
model calls on the same inputs in the same run. Target: at least 0.9x (our bookkeeping must be
cheap). Two generators on the tests' tiny random Qwen-Image-Edit (CPU): a prompted editor (the
bare call: the diffusers pipeline with the prompt) and PixelSmile (the bare call:
`pixelsmile.infer.edit`, interpolated conditioning included).

    python benches/generation.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benches.common import report  # noqa: E402
from curation.batches import manifests  # noqa: E402
from curation.generation import GenerationSettings, generate_variants, usable_sources  # noqa: E402
from pipelines.build import build  # noqa: E402
from pixelsmile.generate import CONDITION_AREA, GeneratorSpec, load_generator  # noqa: E402
from pixelsmile.qwen import build_tiny, image_areas  # noqa: E402
from pixelsmile.synthetic import write_world_input  # noqa: E402
from storage.layout import Layout  # noqa: E402

TARGET = 0.9
SIZE, STEPS = 64, 4


def bare_calls(kind: str, generator, layout: Layout, sources: list[dict], settings: GenerationSettings) -> float:
    """Seconds for the model alone on the same requests: no keys, no files, no tables."""
    from pixelsmile.infer import EditSettings, edit

    start = time.perf_counter()
    for src in sources:
        crop = Image.open(layout.root / src["crop_path"]).convert("RGB")
        for category in settings.categories:
            for intensity in settings.intensities:
                for seed in settings.seeds:
                    if kind == "pixelsmile":
                        edit(generator.pipe, crop, {category: intensity},
                             EditSettings(steps=STEPS, seed=seed, size=SIZE))  # fmt: skip
                    else:
                        with torch.no_grad(), image_areas(SIZE * SIZE, CONDITION_AREA):
                            generator.pipe(image=crop, prompt=generator.prompt(category, intensity),
                                           num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="pil",
                                           true_cfg_scale=1.0,
                                           generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    people = 4 if args.quick else 10
    settings = GenerationSettings(categories=("happy", "surprised"), intensities=(0.5, 1.0))
    results = {}
    with tempfile.TemporaryDirectory(prefix="ffe-bench-generation-") as tmp:
        root = Path(tmp)
        model = build_tiny(root / "tiny-qwen-image-edit")
        layout = Layout.at(root / "w")
        write_world_input(root / "input", people=people, faces_per_person=2)
        assert build(layout, root / "input", "+key:identities", echo=lambda _: None, pre_cropped=True).ok
        (batch,) = [m.batch for m in manifests(layout)]
        sources = usable_sources(layout, batch)
        for kind in ("qwen-image-edit", "pixelsmile"):
            generator = load_generator(GeneratorSpec(kind=kind, model_path=str(model), steps=STEPS, size=SIZE))
            generator(Image.open(layout.root / sources[0]["crop_path"]), "happy", 0.5, 0)  # warm-up
            bare = bare_calls(kind, generator, layout, sources, settings)
            start = time.perf_counter()
            result = generate_variants(layout, batch, generator, settings)
            ours = time.perf_counter() - start
            shutil.rmtree(layout.generated / batch)  # the next kind makes its own
            results[kind] = {"variants": result.generated, "bare_s": round(bare, 3), "ours_s": round(ours, 3),
                             "variants_per_s": round(result.generated / ours, 2),
                             "ratio_vs_bare": round(bare / ours, 3)}  # fmt: skip
    worst = min(r["ratio_vs_bare"] for r in results.values())
    report("generation", args.quick, {"bench": "generation", "setup": f"tiny random Qwen-Image-Edit, {SIZE} px, "
                                      f"{STEPS} steps, CPU", "sources": len(sources), "generators": results,
                                      "target": TARGET, "meets_target": worst >= TARGET})  # fmt: skip


if __name__ == "__main__":
    main()

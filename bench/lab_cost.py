"""What the lab's decoded cells cost, and the fewest decoding steps that keep the verified pass rate.

    .venv/bin/python bench/lab_cost.py --decoder DIR --steps 2 4 6 10 --guidance 1 2 --n-per-class 200

For one split's trained decoder (``--decoder``, a ``train-decoder`` folder;
default: the animals default split's, trained on first use): draws the
default sampler's vectors (``--n-per-class`` per class, one seed), decodes the
whole pool in one batch per setting, re-encodes it and prints, per (steps,
guidance): seconds, images per second and the verified pass rate at the lab's
threshold (ID percentile <= 10), against the decoder's recommended setting
measured in the same run (ratio of pass rates, paired over the same vectors
and seeds). Wall and CPU seconds both: on a busy machine CPU seconds are the
figure an idle core would give.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--decoder", type=Path, default=None)
    p.add_argument("--split", default="animals", help="the split the decoder was trained on (animals:dog+horse+sheep)")
    p.add_argument("--steps", type=int, nargs="+", default=[2, 3, 4, 6, 10])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--n-per-class", type=int, default=150)
    p.add_argument("--batch", type=int, default=1024, help="decoder slots: images per pipeline call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    from oodsynth.data import ProfileSplit
    from oodsynth.decoding.pipeline import OutlierDecoder
    from oodsynth.decoding.verification import DEFAULT_MAX_ID_PERCENTILE, images_to_tensor, verify_images
    from oodsynth.lab import LabSettings, profile_assets
    from oodsynth.samplers import DEFAULT_METHOD

    split = ProfileSplit.parse(args.split)
    assets = profile_assets(split, Path("/tmp/lab_cost_cache"), "gaussian_full", args.decoder)
    settings = LabSettings()
    result = settings.sampler(DEFAULT_METHOD).sample(assets.fit, args.n_per_class, seed=args.seed, bank=assets.bank)
    vectors = result.vectors
    seeds = [args.seed * 1_000_003 + i for i in range(len(vectors))]
    decoder = OutlierDecoder(assets.decoder_dir, device="cpu", n_slots=args.batch)
    size = assets.encoder.config.image_size
    base = {**assets.decode, "output_size": size}
    rows = []
    reference = None
    grid = [(base["steps"], base["guidance_scale"])] + [(s, g) for g in args.guidance for s in args.steps]
    for steps, guidance in dict.fromkeys(grid):
        t0, c0 = time.perf_counter(), time.process_time()
        images = decoder.decode(vectors, seeds, **{**base, "steps": steps, "guidance_scale": guidance})
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        ver = verify_images(assets.encoder, assets.fit, images_to_tensor(images, size))
        passes = ver.passes(DEFAULT_MAX_ID_PERCENTILE)
        if reference is None:
            reference = passes
        row = {
            "steps": steps,
            "guidance_scale": guidance,
            "n": len(vectors),
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "images_per_cpu_s": round(len(vectors) / cpu, 1),
            "pass_rate": float(passes.mean()),
            "pass_rate_ratio_to_recommended": float(passes.mean() / max(reference.mean(), 1e-9)),
            "agreement_with_recommended": float((passes == reference).mean()),
            "median_id_percentile": float(np.median(ver.id_percentile)),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"sampler {DEFAULT_METHOD}, {len(vectors)} vectors, decoder {assets.decoder_dir}")
    if args.json:
        args.json.write_text(json.dumps({"decoder": str(assets.decoder_dir), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

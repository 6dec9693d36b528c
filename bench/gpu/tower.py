#!/usr/bin/env python3
"""Step 4 of bench/gpu.sh: image-tower throughput. ViT-B/16 at 224 px, random weights, bf16,
inference mode, one process; models compared at one batch size are timed interleaved, so drift
hits them alike.

    python3 bench/gpu/tower.py --result tower.json            # on the GPU host, about 100 s
    python3 bench/gpu/tower.py --result /tmp/t.json --dry-run # tiny shape on the CPU, seconds

Most important first, each figure written to the result as soon as it is measured:
  1. batch 256, interleaved: ours eager; the seed's code (seed_clip.ViT) with our weights;
     transformers CLIPVisionModel (attn_implementation="sdpa", ViT-B/16 config, random init);
     plus max |ours - seed| on the same input (fp32 at batch 2, and bf16 at batch 256);
  2. ours eager at batch 32 (the engine's max batch) and at batch 1 (latency);
  3. ours torch.compile'd (default mode) at batch 256; timm vit_base_patch16_224 compiled at 256;
     then the two interleaved once more;
  4. ours compiled with mode="reduce-overhead" (CUDA graphs) at batch 1;
  5. ours compiled at batch 32, if the budget still allows.
Per entry: images_per_s (median call), latency_ms at batch 1 (batch_ms otherwise), peak memory
(CUDA), compile_s, and ratio_to_best_peer (images/s over the best of seed, transformers and timm
at batch 256). ``ceiling_at_engine_max_batch`` is our fastest rate at the engine's max batch (32),
for comparison with step 5 (which measures its own ceiling through the engine). Anything that
cannot run, or is not started because the budget is spent, says why under ``skipped``.

--dry-run runs the same code on the CPU with the tiny shape, batches 1/4/8 and a few iterations.
Its compiles use backend="eager": dynamo still captures each model (graph breaks and tracing
errors show) but inductor's C++ codegen is left out: it takes about a minute on a CPU even for the
tiny model, and CUDA graphs need CUDA anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from common import Results, Setting, import_seed, log, step_arguments, time_calls
from common import setting as step_setting
from measuring import (
    Budget,
    Entry,
    PeakMemory,
    Skip,
    describe_host,
    entry,
    exit_status,
    images_per_s,
    milliseconds,
    quiet_threads,
    ratio,
    scaled_batch,
    service_default,
)

from model.config import VisionConfig
from model.vision import ViT

PEERS = ("seed", "transformers", "timm")  # the implementations ours is compared with
HEADLINE = ("images_per_s", "ratio_to_best_peer", "best_peer", "ceiling_at_engine_max_batch")
LARGE, SMALL = 256, 1  # nominal batch sizes (the dry run scales them down)


@dataclass
class Plan:
    """How much to measure: iterations per timed call, rounds of interleaving, the time budget."""

    dtype: torch.dtype
    iterations: dict[int, int]  # nominal batch -> timed calls per round
    warmup: int  # untimed calls before a contender's first round
    rounds: int  # interleaved rounds where models are compared
    budget: Budget
    eager_need_s: float  # seconds an eager entry needs to be started
    compile_need_s: float  # ... and a compiled one, until a compile has been timed


def make_plan(setting: Setting, budget_seconds: float | None = None) -> Plan:
    if setting.dry_run:  # the budget never skips anything here: the dry run is there to run every path
        return Plan(
            torch.bfloat16,
            {1: 3, 32: 3, 256: 3},
            warmup=1,
            rounds=2,
            budget=Budget(600),
            eager_need_s=0,
            compile_need_s=0,
        )
    return Plan(
        torch.bfloat16,
        {1: 50, 32: 20, 256: 8},
        warmup=3,
        rounds=2,
        budget=Budget(budget_seconds or 90),
        eager_need_s=4,
        compile_need_s=20,
    )


def compile_options(setting: Setting, mode: str | None = None) -> dict[str, Any]:
    """torch.compile arguments: static shapes (one graph per batch size), the given mode on CUDA."""
    if setting.dry_run:
        return {"backend": "eager", "dynamic": False}
    return {"mode": mode, "dynamic": False} if mode else {"dynamic": False}


def graph_breaks() -> int:
    from torch._dynamo.utils import counters  # dynamo's own tally; private, so read defensively

    return sum(counters.get("graph_break", {}).values())


# --- the models ------------------------------------------------------------------------------------
def build_ours_and_seed(setting: Setting) -> tuple[ViT, torch.nn.Module]:
    """Our ViT with random weights and the seed's ViT holding the same weights, fp32, on the device."""
    config = VisionConfig(**setting.shape["vision"])
    torch.manual_seed(0)
    with torch.device(setting.device):
        ours = ViT(config).eval()
        seed = (
            import_seed()
            .ViT(
                image_size=config.image_size,
                patch_size=config.patch_size,
                embed_dim=config.width,
                num_heads=config.num_heads,
                num_layers=config.num_layers,
                mlp_hidden_dim=config.mlp_dim,
            )
            .eval()
        )
    seed.load_state_dict(ours.state_dict(), strict=True)
    return ours, seed


def max_difference(first: Callable, second: Callable, pixels: torch.Tensor) -> dict[str, float]:
    a, b = first(pixels).float(), second(pixels).float()
    return {"max_abs_diff": (a - b).abs().max().item(), "output_max_abs": a.abs().max().item()}


def build_transformers(setting: Setting, dtype: torch.dtype) -> tuple[Callable, dict[str, Any]]:
    """transformers' CLIPVisionModel at our shape (exact GELU, as ours), SDPA attention, random init."""
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vision = setting.shape["vision"]
    config = CLIPVisionConfig(
        hidden_size=vision["width"],
        intermediate_size=vision["mlp_dim"],
        num_hidden_layers=vision["num_layers"],
        num_attention_heads=vision["num_heads"],
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        hidden_act="gelu",
    )
    model = CLIPVisionModel._from_config(config, attn_implementation="sdpa").to(setting.device, dtype).eval()
    details = {"transformers": transformers.__version__, "attn_implementation": model.config._attn_implementation}
    return (lambda pixels: model(pixel_values=pixels).pooler_output), details


def build_timm(setting: Setting, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, Any]]:
    """timm's vit_base_patch16_224 without a head (pooled CLS features, as ours), random init."""
    try:
        import timm
    except ImportError as error:
        raise Skip(f"timm is not importable here: {error}") from error
    vision = setting.shape["vision"]
    torch.manual_seed(0)
    with torch.device(setting.device):  # keyword arguments override the variant's (equal for the real shape)
        model = timm.create_model(
            "vit_base_patch16_224",
            pretrained=False,
            num_classes=0,
            img_size=vision["image_size"],
            patch_size=vision["patch_size"],
            embed_dim=vision["width"],
            depth=vision["num_layers"],
            num_heads=vision["num_heads"],
            mlp_ratio=vision["mlp_dim"] / vision["width"],
        )
    return model.to(dtype).eval(), {"timm": timm.__version__}


# --- measuring -------------------------------------------------------------------------------------
class Contender:
    """One model at one batch size: its call, its timings so far, and its entry in the results."""

    def __init__(self, entry: Entry, model: str, call: Callable[[], Any], batch: int, nominal_batch: int):
        self.entry, self.model, self.call = entry, model, call
        self.batch, self.nominal_batch = batch, nominal_batch
        self.timings: list[float] = []
        self.peak: dict[str, float] = {}

    @property
    def rate(self) -> float | None:
        return self.entry.data.get("images_per_s")

    def measure(self, setting: Setting, plan: Plan) -> None:
        """One round of timed calls (after warm-up calls on the first), added to the earlier rounds."""
        if self.entry.failed:
            return
        with self.entry.guarded():
            warmup = 0 if self.timings else plan.warmup
            with PeakMemory(setting) as memory:
                self.timings += time_calls(self.call, setting, plan.iterations[self.nominal_batch], warmup)
            for name, value in memory.figures().items():
                self.peak[name] = max(value, self.peak.get(name, 0.0))
            spread = milliseconds(self.timings)
            self.entry.record(
                images_per_s=images_per_s(self.batch, self.timings),
                **{"latency_ms" if self.batch == 1 else "batch_ms": spread},
                **self.peak,
            )
            log(f"{self.entry.key}: {self.rate:.1f} images/s over {len(self.timings)} calls")


class TowerBench:
    def __init__(self, setting: Setting, results: Results, plan: Plan):
        self.setting, self.results, self.plan = setting, results, plan
        self.engine_batch = service_default("max_batch")  # nominal, as LARGE and SMALL
        self.contenders: list[Contender] = []
        self._pixels: dict[int, torch.Tensor] = {}
        self.slowest_compile_s = 0.0
        for key in HEADLINE:  # first in the file, so a summary that shows its first lines shows these
            results[key] = {}

    def batch_of(self, nominal: int) -> int:
        return scaled_batch(self.setting, nominal)

    def pixels(self, batch: int) -> torch.Tensor:
        """One normalised-pixel-like input per batch size, shared by every model at that size."""
        if batch not in self._pixels:
            generator = torch.Generator().manual_seed(batch)
            size = self.setting.shape["vision"]["image_size"]
            self._pixels[batch] = torch.randn(batch, 3, size, size, generator=generator).to(
                self.setting.device, self.plan.dtype
            )
        return self._pixels[batch]

    def new_entry(self, key: str, model: str, nominal_batch: int, **description: Any) -> Entry:
        return Entry(
            self.results,
            key,
            model=model,
            batch=self.batch_of(nominal_batch),
            dtype=str(self.plan.dtype).removeprefix("torch."),
            **description,
        )

    def add(self, entry: Entry, model: str, module: Callable, nominal_batch: int) -> Contender:
        pixels = self.pixels(self.batch_of(nominal_batch))
        contender = Contender(entry, model, lambda: module(pixels), self.batch_of(nominal_batch), nominal_batch)
        self.contenders.append(contender)
        return contender

    def measure(self, contenders: list[Contender], rounds: int = 1) -> None:
        """``rounds`` interleaved rounds over ``contenders``; figures and ratios recorded after each."""
        for _ in range(rounds):
            for contender in contenders:
                contender.measure(self.setting, self.plan)
                self.update_summary()

    def update_summary(self) -> None:
        """The headline: every rate, each entry's ratio to the best peer, the best peer, and our ceiling
        at the engine's max batch."""
        measured = [c for c in self.contenders if c.rate]
        self.set_if_changed("images_per_s", {c.entry.key: c.rate for c in measured})
        best = self.fastest(lambda c: c.model in PEERS and c.nominal_batch == LARGE)
        if best is not None:
            self.set_if_changed("best_peer", {"entry": best.entry.key, "images_per_s": best.rate})
            for contender in measured:
                figure = ratio(contender.rate, best.rate)
                if contender.entry.data.get("ratio_to_best_peer") != figure:
                    contender.entry.record(ratio_to_best_peer=figure)
            self.set_if_changed(
                "ratio_to_best_peer", {c.entry.key: c.entry.data["ratio_to_best_peer"] for c in measured}
            )
        ceiling = self.fastest(lambda c: c.model == "ours" and c.nominal_batch == self.engine_batch)
        if ceiling is not None:
            self.set_if_changed(
                "ceiling_at_engine_max_batch",
                {
                    "max_batch": ceiling.batch,
                    "images_per_s": ceiling.rate,
                    "entry": ceiling.entry.key,
                    "note": "our fastest image tower (ViT only: no projection, input already normalised) "
                    "at the engine's max batch",
                },
            )

    def fastest(self, which: Callable[[Contender], bool]) -> Contender | None:
        return max((c for c in self.contenders if which(c) and c.rate), key=lambda c: c.rate, default=None)

    def set_if_changed(self, key: str, value: Any) -> None:
        if self.results.data.get(key) != value:
            self.results[key] = value

    # --- the phases, most important first ----------------------------------------------------------
    def eager_comparison(self) -> ViT:
        """Ours, the seed's and transformers' at the large batch, interleaved; returns ours (bf16)."""
        plan, setting = self.plan, self.setting
        ours, seed = build_ours_and_seed(setting)  # failing here is a bug in our code: let the step fail
        with entry(self.results, "sanity_vs_seed", note="max |ours - seed| on the same input, same weights") as sanity:
            sanity.record(fp32_batch_2=max_difference(ours, seed, self.pixels(2).float()))
        ours, seed = ours.to(plan.dtype), seed.to(plan.dtype)
        with sanity.guarded():
            large_batch = self.batch_of(LARGE)
            sanity.record(
                bf16_large_batch={"batch": large_batch, **max_difference(ours, seed, self.pixels(large_batch))}
            )
        large = [
            self.add(self.new_entry(f"ours_eager_b{LARGE}", "ours", LARGE, compiled=False), "ours", ours, LARGE),
            self.add(self.new_entry(f"seed_eager_b{LARGE}", "seed", LARGE, compiled=False), "seed", seed, LARGE),
        ]
        with self.new_entry(f"transformers_sdpa_b{LARGE}", "transformers", LARGE, compiled=False).guarded() as e:
            hf, details = build_transformers(setting, plan.dtype)
            e.record(**details)
            large.append(self.add(e, "transformers", hf, LARGE))
        self.measure(large, rounds=plan.rounds)
        return ours

    def eager_small_batches(self, ours: ViT) -> None:
        for nominal in (self.engine_batch, SMALL):
            with self.new_entry(f"ours_eager_b{nominal}", "ours", nominal, compiled=False).guarded() as e:
                self.plan.budget.require(self.plan.eager_need_s, "an eager entry")
                self.measure([self.add(e, "ours", ours, nominal)])

    def compiled(
        self,
        key: str,
        model: str,
        build: Callable[[], tuple[Callable, dict]],
        nominal_batch: int,
        mode: str | None = None,
    ) -> Contender | None:
        """Compile ``build()``'s module, time its first call (the compile), then measure it."""
        options = compile_options(self.setting, mode)
        contender = None
        with self.new_entry(key, model, nominal_batch, compiled=options).guarded() as e:
            # what the slowest compile so far took (and the timing after it), or the plan's guess before one
            need = (
                max(self.plan.compile_need_s, 1.2 * self.slowest_compile_s + 3)
                if self.slowest_compile_s
                else self.plan.compile_need_s
            )
            self.plan.budget.require(need, "a torch.compile entry")
            module, details = build()
            e.record(**details)
            compiled = torch.compile(module, **options)
            pixels = self.pixels(self.batch_of(nominal_batch))
            breaks = graph_breaks()
            seconds = wall_seconds(lambda: compiled(pixels), self.setting)
            self.slowest_compile_s = max(self.slowest_compile_s, seconds)
            e.record(compile_s=round(seconds, 2), graph_breaks=graph_breaks() - breaks)
            log(f"{key}: compiled in {e.data['compile_s']} s")
            contender = self.add(e, model, compiled, nominal_batch)
            self.measure([contender])
        return contender

    def run(self) -> None:
        ours = self.eager_comparison()
        self.eager_small_batches(ours)
        as_is = lambda: (ours, {})  # noqa: E731
        mine = self.compiled(f"ours_compiled_b{LARGE}", "ours", as_is, LARGE)
        theirs = self.compiled(
            f"timm_compiled_b{LARGE}", "timm", lambda: build_timm(self.setting, self.plan.dtype), LARGE
        )
        if mine is not None and theirs is not None:
            self.measure([mine, theirs])  # one more round, interleaved, now that both exist
        self.compiled(f"ours_compiled_reduce_overhead_b{SMALL}", "ours", as_is, SMALL, mode="reduce-overhead")
        self.compiled(f"ours_compiled_b{self.engine_batch}", "ours", as_is, self.engine_batch)


def wall_seconds(call: Callable[[], Any], setting: Setting) -> float:
    """Seconds one call takes, synchronised (a compiled model's first call: the compile)."""
    setting.sync()
    started = time.perf_counter()
    call()
    setting.sync()
    return time.perf_counter() - started


def main() -> int:
    args = step_arguments(__doc__.split("\n\n")[0]).parse_args()
    setting = step_setting(args.dry_run)
    results = Results(args.result)
    plan = make_plan(setting, args.budget)
    quiet_threads(setting)
    bench = TowerBench(setting, results, plan)
    results["host"] = describe_host(setting)
    results["shape"] = setting.shape["vision"]
    log(f"tower: {setting.device}, {'dry run' if setting.dry_run else 'real run'}")
    with torch.inference_mode():
        bench.run()
    log(f"tower: done, {plan.budget.seconds - plan.budget.left():.1f} s since start")
    return exit_status(results)


if __name__ == "__main__":
    raise SystemExit(main())

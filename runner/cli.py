"""`python -m runner` (installed as `qabench`): validate | schema | plan | run | score | verify | pull | expand | k8s | data.

Thin: heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runner.console import error, log
from runner.errors import EXIT_DAMAGED, InfraError, UserError
from runner.filemodes import apply_umask_setting


def _is_grid(path: Path) -> bool:
    """Grid files (top-level `axes:`) sit beside manifests and are checked by expanding them."""
    import yaml

    from runner.yaml_lines import load_yaml

    try:
        # The checked loader: PyYAML's own takes hours over a deeply nested document.
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, yaml.YAMLError):
        return False  # not readable as YAML: check_manifest reports it
    return isinstance(data, dict) and "axes" in data


def _validate(args: argparse.Namespace) -> int:
    from runner.manifest import check_manifest, fetch_command, manifest_files, parse_overrides, shot_notes, unfetched_data
    from runner.model_spec import remote_code_warnings
    from runner.prompt_style import describe as describe_style

    overrides = parse_overrides(args.set)
    files = manifest_files([Path(p) for p in args.paths])
    missing = [p for p in args.paths if not Path(p).exists()]
    problems = [f"{p}: no such file or folder" for p in missing]
    grids = [f for f in files if f.exists() and _is_grid(f)]
    unfetched: set[Path] = set()
    notes: list[str] = []
    warnings: list[str] = []
    styles: dict[str, list[Path]] = {}
    for grid in grids:
        from runner.grid import expand

        try:
            expand(grid)
        except UserError as exc:
            problems += [str(p) for p in exc.problems]
    manifests = [f for f in files if f not in grids]
    for file in manifests:
        if file.exists():
            loaded, found = check_manifest(file, overrides=overrides)
            problems += [str(p) for p in found]
            unfetched.update(unfetched_data(loaded) if loaded else [])
            notes += shot_notes(loaded) if loaded else []
            if loaded:
                styles.setdefault(describe_style(loaded.manifest), []).append(file)
                warnings += remote_code_warnings(loaded, str(file))
    for line in problems + warnings:
        error(line)
    if not files and not missing:
        error("no manifest files (*.yaml, *.yml) found")
        return 2
    if problems:
        return 2
    if unfetched:
        error(f"note: {len(unfetched)} UnifiedQA file(s) not fetched yet; before running: {fetch_command(sorted(unfetched))}")
    for note in notes:
        error(f"note: {note}")
    grid_note = f" and {len(grids)} grid(s)" if grids else ""
    print(f"{len(manifests)} manifest(s){grid_note} valid")
    for style, paths in sorted(styles.items()):
        shown = ", ".join(p.name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        error(f"note: {style} — {shown}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from runner.docs import manifest_reference

        sys.stdout.write(manifest_reference())
    else:
        from runner.manifest import json_schema

        print(json.dumps(json_schema(), indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from runner import distributed, preemption
    from runner.manifest import load_manifest, parse_overrides
    from runner.run import run
    from runner.training_stage import TrainingBusy

    preemption.install()
    overrides = parse_overrides(args.set)
    # Every manifest is validated before the first one runs: a typo in the last must not wait hours.
    manifests = [load_manifest(Path(path), overrides=overrides) for path in args.manifests]
    deferred = []
    for position, loaded in enumerate(manifests):
        if loaded.manifest.devices > 1 and distributed.world_size() == 1:
            code = distributed.launch(loaded.path, args.storage, loaded.manifest.devices, loaded.overrides)
            if code != 0:
                return code
            continue
        # With manifests left to run, one whose training another process holds waits until the end.
        try:
            run(loaded, args.storage, wait=position == len(manifests) - 1 and not deferred)
        except TrainingBusy as busy:
            log(f"{loaded.path.name}: {busy}; running the other manifests first")
            deferred.append(loaded)
    for loaded in deferred:
        run(loaded, args.storage, wait=True)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from runner.manifest import load_manifest, manifest_files, parse_overrides
    from runner.plan import build_plan, render_text

    overrides = parse_overrides(args.set)
    files = manifest_files([Path(p) for p in args.paths])
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise UserError([f"{p}: no such file or folder" for p in missing])
    if not files:
        raise UserError("no manifest files (*.yaml, *.yml) found")
    if args.schedule and (args.gpu_memory is not None or args.prompt_tokens is not None):
        raise UserError("--gpu-memory and --prompt-tokens apply to the plan, not to --schedule (a list of manifests)")
    manifests = [load_manifest(file, check_files=not args.schedule, overrides=overrides) for file in files if not _is_grid(file)]
    plan = build_plan(manifests, args.storage, resolve=not args.schedule)
    memory = None
    if args.gpu_memory is not None:
        from runner.memory_plan import plan_memory

        memory = plan_memory(manifests, args.gpu_memory, args.prompt_tokens)
    if args.schedule:
        print("\n".join(str(path) for path in plan.schedule()))
    elif args.json:
        data = plan.as_json()
        if memory is not None:
            from runner.memory_plan import memory_json

            data["memory"] = memory_json(memory, args.gpu_memory)
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(render_text(plan))
        if memory is not None:
            from runner.memory_plan import render_memory

            sys.stdout.write(render_memory(memory, args.gpu_memory))
    return 0


def _score(args: argparse.Namespace) -> int:
    from runner.score import rescore
    from runner.verify_storage import check_evaluation, open_run, repair, seal

    # Checksums first: scoring a shard that is not the one the run wrote would publish wrong numbers.
    store, keys = open_run(args.run)
    check = check_evaluation(store, keys)
    # metrics.json is what scoring rewrites from the shards, so only the rest must be sound.
    rewritten = [f for f in check.findings if f.key == keys.metrics]
    if any(f.key != keys.metrics and not f.reason.startswith("reopened") for f in check.findings):
        for finding in check.findings:
            error(f"{store.uri.rstrip('/')}/{finding.key}: {finding.reason}")
        error(f"repaired: {repair(store, check)}; rerun the manifest of {keys.name} to regenerate what is missing, then score again")
        return EXIT_DAMAGED
    for finding in rewritten:
        log(f"{store.uri.rstrip('/')}/{finding.key}: {finding.reason}; rewritten from the shards")
    metrics = rescore(args.run)
    if store.exists(keys.success):
        seal(store, keys)  # _SUCCESS vouches for the metrics.json just written
    print(json.dumps(metrics["overall"], indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from runner.storage import open_store
    from runner.verify_storage import verify_storage

    store = open_store(args.storage)
    result = verify_storage(store, repair_found=args.repair)
    for line in result.lines:
        print(line)
    print(f"{result.checked} stage(s) checked in {store.uri}: {result.problems} problem(s)" + (f", {len(result.repaired)} repaired" if result.repaired else ""))
    if result.repaired:
        names = ", ".join(sorted(set(result.repaired)))
        print(f"reopened: {names}; the next `python -m runner run` of their manifests regenerates what was moved aside")
        return 0
    if result.problems:
        error(f"`python -m runner verify {args.storage} --repair` moves the damaged objects aside (to _quarantine/) and reopens their runs")
        return EXIT_DAMAGED
    return 0


def _pull(args: argparse.Namespace) -> int:
    from runner.storage import open_store

    store = open_store(args.uri)
    copied = store.copy_to("", Path(args.dest))
    if not copied:
        raise UserError(f"{args.uri}: nothing stored there")
    print(f"{len(copied)} object(s) copied from {store.uri} to {args.dest}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from runner.data.fetch import UNIFIEDQA_URL, fetch

    fetch(args.datasets, args.splits, Path(args.to), base_url=args.base_url or UNIFIEDQA_URL)
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from runner.data.synthetic import write_synthetic

    for path in write_synthetic(Path(args.out), n_train=args.train, n_dev=args.dev, seed=args.seed):
        print(path)
    return 0


def _expand(args: argparse.Namespace) -> int:
    from runner.grid import compare, expected_files, write

    out = Path(args.out)
    expected = expected_files(Path(args.grid), out)
    if args.check:
        difference = compare(expected, out)
        for label, names in (("missing", difference.missing), ("differs", difference.changed), ("stale", difference.stale)):
            for name in names:
                error(f"{out / name}: {label}")
        if difference:
            error(f"{out} is not what {args.grid} expands to: run python -m runner expand {args.grid} --out {args.out}")
            return 1
        print(f"{out}: {len(expected)} manifest(s), current")
        return 0
    done = write(expected, out)
    print(f"{out}: {len(expected)} manifest(s); {len(done.missing)} written, {len(done.changed)} updated, {len(done.stale)} stale removed")
    return 0


def _k8s(args: argparse.Namespace) -> int:
    from runner.k8s import collect, job_names, job_settings, render, render_notes

    folder = Path(args.folder)
    settings = job_settings(
        folder, args.image, args.storage, name=args.name, mount_path=args.mount_path, parallelism=args.parallelism,
        retries=args.retries, secrets=args.secret, secret_keys=args.secret_key, namespace=args.namespace,
        data_claim=args.data_claim, model_cache_claim=args.model_cache_claim, cpus_per_gpu=args.cpus_per_gpu, cpu=args.cpu,
        memory=args.memory, ephemeral_storage=args.ephemeral_storage, gpu_product=args.gpu_product, node_selectors=args.node_selector,
    )
    manifests = collect(folder)
    text = render(manifests, settings)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    from runner.atomic import write_atomic

    out = Path(args.out)
    write_atomic(out, text)
    for note in render_notes(manifests, settings):  # the file's header holds them too: all a reader of stdout gets
        error(f"note: {note}")
    print(f"{out}: ConfigMap, NetworkPolicy and Indexed Job {', '.join(job_names(manifests, settings).values())}; kubectl apply --server-side -f {out}")
    return 0


class _Version(argparse.Action):
    """`--version`: the package version and the commit, printed when asked (no git call otherwise)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the qabench version and git commit, then exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        from runner.provenance import version

        print(version())
        parser.exit(0)


def _add_overrides(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set", action="append", metavar="FIELD=VALUE",
        help="replace a manifest field for this command, e.g. --set decoding.batch_size=4 (VALUE is YAML: 4, true, "
        "[a, b], {kind: lora}); repeatable, applied to every manifest given and checked like the file; "
        "recorded in the run's provenance.json",
    )


def build_parser(prog: str = "python -m runner") -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog=prog, description="Run and check qabench experiments.")
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check manifests; every problem as FILE:LINE: field: message")
    validate.add_argument("paths", nargs="+", help="manifest files or folders (searched recursively)")
    _add_overrides(validate)
    validate.set_defaults(handler=_validate)

    schema = commands.add_parser("schema", help="print the manifest JSON schema")
    schema.add_argument("--markdown", action="store_true", help="print the field reference as Markdown")
    schema.set_defaults(handler=_schema)

    run = commands.add_parser("run", help="run manifests (skips finished runs, resumes interrupted ones)")
    run.add_argument("manifests", nargs="+")
    run.add_argument("--storage", help="storage: a folder (relative to the working folder), file:///absolute/path or s3://bucket/prefix; overrides output.storage; default runs/")
    _add_overrides(run)
    run.set_defaults(handler=_run)

    plan = commands.add_parser("plan", help="the stage graph: distinct trainings and evaluations, done, partly done or pending")
    plan.add_argument("paths", nargs="+", help="manifest files or folders (searched recursively)")
    plan.add_argument("--storage", help="storage URI to check (default: each manifest's output.storage, else QABENCH_STORAGE, else runs/)")
    plan.add_argument("--json", action="store_true", help="machine-readable plan")
    _add_overrides(plan)
    plan.add_argument(
        "--schedule", action="store_true",
        help="print the manifests in run order (each training's first user first); reads no data, hub or storage",
    )
    from runner.memory_plan import gpu_memory_gb, prompt_tokens_count

    plan.add_argument(
        "--gpu-memory", type=gpu_memory_gb, metavar="GB",
        help="also estimate each run's training and evaluation peak memory from the model config, say whether it "
        "fits a card of this many GB (as labelled: 24, 80; read as GiB) and the cheapest manifest change that would",
    )
    plan.add_argument(
        "--prompt-tokens", type=prompt_tokens_count, metavar="N",
        help="with --gpu-memory: the longest evaluation prompt to plan for (default: (icl.shots + 1) × train.max_seq_length, within the context)",
    )
    plan.set_defaults(handler=_plan)

    score = commands.add_parser("score", help="recompute metrics.json of a stored run from its shards")
    score.add_argument("run", help="run location, e.g. runs/<name>/<digest>")
    score.set_defaults(handler=_score)

    verify = commands.add_parser(
        "verify", help="check every run and training in a storage against its checksums; --repair moves damage aside and reopens them",
        description="One line per problem. Exit 0 when clean (or everything found was repaired), 4 when problems remain, 3 when storage cannot be read.",
    )
    verify.add_argument("storage", help="storage: a folder, file:///absolute/path or s3://bucket/prefix")
    verify.add_argument(
        "--repair", action="store_true",
        help="move damaged objects to <run or training>/_quarantine/<time>/ (never deleted) and reopen their stages; rerun their manifests afterwards",
    )
    verify.set_defaults(handler=_verify)

    pull = commands.add_parser("pull", help="copy a run or a whole prefix from storage to a local folder, checksums verified")
    pull.add_argument("uri", help="s3://bucket/prefix[/<name>/<digest>], file:///absolute/path or a folder")
    pull.add_argument("dest", help="local folder; each object lands at DEST/<its key below URI>")
    pull.set_defaults(handler=_pull)

    expand = commands.add_parser("expand", help="write one manifest per cell of a grid file; --check: fail if the folder is stale")
    expand.add_argument("grid", help="grid file, e.g. manifests/grid.yaml")
    expand.add_argument("--out", required=True, help="folder of generated manifests, e.g. manifests/grid/")
    expand.add_argument("--check", action="store_true", help="write nothing; exit 1 if the folder differs from the expansion")
    expand.set_defaults(handler=_expand)

    k8s = commands.add_parser("k8s", help="write a ConfigMap and an Indexed Job running every manifest of a folder, one per pod")
    k8s.add_argument("folder", help="folder of manifests, e.g. manifests/grid/; index i runs the i-th file in name order")
    k8s.add_argument("--image", required=True, help="image with a fixed tag or digest, e.g. registry/qabench:1a2b3c4")
    k8s.add_argument("--storage", required=True, help="s3://bucket/prefix every pod writes to")
    k8s.add_argument("--parallelism", type=int, default=1, help="pods (GPUs) at once (default 1)")
    k8s.add_argument("--retries", type=int, default=3, help="retries per index after an infrastructure failure (default 3)")
    k8s.add_argument(
        "--secret", action="append", metavar="NAME",
        help="Secret whose every key becomes an environment variable (AWS_*, HF_TOKEN); repeatable "
        "(default qabench-credentials, unless --secret-key is given)",
    )
    k8s.add_argument(
        "--secret-key", action="append", metavar="VARIABLE=SECRET:KEY",
        help="one key of a Secret as one variable, e.g. HF_TOKEN=hf-token:token; repeatable",
    )
    k8s.add_argument("--namespace", help="namespace of both objects (default: kubectl's current one)")
    k8s.add_argument("--name", help="Job name (default qabench-<folder name>)")
    k8s.add_argument("--data-claim", help="PersistentVolumeClaim holding the manifests' data folder, mounted read-only")
    k8s.add_argument(
        "--model-cache-claim", metavar="CLAIM",
        help="ReadWriteMany PersistentVolumeClaim shared by every pod as the model cache (HF_HOME), so weights are "
        "downloaded once; concurrent downloads are safe (huggingface_hub locks each file)",
    )
    k8s.add_argument("--mount-path", help="where the manifests appear in the pod (default /app/<folder>, its place in the image)")
    k8s.add_argument("--cpus-per-gpu", type=int, metavar="N", help="CPUs requested per GPU of a pod (default 8)")
    k8s.add_argument("--cpu", metavar="QUANTITY", help="CPUs per pod of every Job instead, e.g. 12 or 7500m")
    k8s.add_argument("--memory", metavar="QUANTITY", help="memory per pod of every Job, e.g. 64Gi (default: from the manifests' model sizes)")
    k8s.add_argument(
        "--ephemeral-storage", metavar="QUANTITY",
        help="local disk per pod of every Job, e.g. 200Gi (default: model downloads, checkpoints and outputs from the manifests)",
    )
    k8s.add_argument("--gpu-product", metavar="NAME", help="run only on nodes with this GPU (label nvidia.com/gpu.product), e.g. NVIDIA-H100-80GB-HBM3")
    k8s.add_argument("--node-selector", action="append", metavar="KEY=VALUE", help="node label every pod's node must carry; repeatable")
    k8s.add_argument("--out", help="write here instead of to stdout")
    k8s.set_defaults(handler=_k8s)

    data = commands.add_parser("data", help="get or make UnifiedQA-format data").add_subparsers(dest="data_command", required=True)
    from runner.data.example import official_datasets_help

    fetch = data.add_parser(
        "fetch", help="download official UnifiedQA TSVs (and SQuAD dev's gold answers)",
        description="Download official UnifiedQA splits; files already present are kept.",
        epilog=official_datasets_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("datasets", nargs="+", help="dataset folder names, listed below")
    fetch.add_argument("--to", required=True, help="folder; files land in <to>/<dataset>/<split>.tsv, answers as <split>_ans.jsonl")
    fetch.add_argument("--splits", nargs="+", help="splits to fetch (default: train and dev)")
    fetch.add_argument("--base-url", help="mirror of https://storage.googleapis.com/unifiedqa/data")
    fetch.set_defaults(handler=_data_fetch)
    synth = data.add_parser("synth", help="write the deterministic synthetic datasets")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train", type=int, default=400)
    synth.add_argument("--dev", type=int, default=60)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_data_synth)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m runner") -> int:
    """Entry point; maps user mistakes to exit 2 and infrastructure failures to exit 3."""
    args = build_parser(prog).parse_args(argv)
    try:
        apply_umask_setting()  # before any write; a bad QABENCH_UMASK is exit 2
        return args.handler(args)
    except UserError as exc:
        for problem in exc.problems:
            error(f"error: {problem}")
        return exc.exit_code
    except InfraError as exc:
        error(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        error("interrupted; completed shards are kept and a rerun resumes")
        return 130


def qabench() -> int:
    """The installed `qabench` command (pyproject's console script): `python -m runner` under its own name."""
    return main(prog="qabench")

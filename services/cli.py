"""``simclr``: run the service, and a thin client of its REST API.

    simclr serve [--host HOST] [--port PORT] [--workers N] [--access-log]
    simclr submit KIND --config FILE [--workers N] [--follow]
    simclr jobs [--status S] [--kind K]
    simclr get ID | logs ID [--follow] | cancel ID | retry ID
    simclr eval JOB_ID [--checkpoint NAME] [--dataset NAME --root DIR] [--mode fast|augmented]
    simclr dirac-gan [--gamma G] [--step-size H] [--steps N] [--out FILE]   (no service needed)
    simclr data pack SRC DST [--shard-mb 256] [--workers N] [--class-list FILE]  (no service needed)

The client reads ``SIMCLR_URL`` (default http://127.0.0.1:8000) and ``SIMCLR_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from services.client import ApiError, Client
from trainer.contracts.config import read_mapping
from trainer.contracts.states import TERMINAL


def serve(args: argparse.Namespace) -> None:
    import logging

    from pydantic import ValidationError

    from services.server import configure_logging, serve
    from services.settings import Settings

    configure_logging()
    overrides = {"host": args.host, "port": args.port, "insecure": args.insecure or None,
                 "workers": args.workers, "access_log": args.access_log or None}  # fmt: skip
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        messages = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise SystemExit(f"error: {messages}") from None
    if settings.insecure and not settings.api_token:
        logging.getLogger("simclr.serve").warning(
            "INSECURE: the API on %s:%d takes requests without a token from anyone who reaches it",
            settings.host, settings.port,
        )  # fmt: skip
    serve(settings)


def read_config(path: str) -> dict[str, Any]:
    try:
        return read_mapping(path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [
        [str(row.get(c, "") if row.get(c) is not None else "") for c in columns] for row in rows
    ]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def describe(job: dict[str, Any]) -> str:
    attempt = job["attempts"][-1]
    lines = [
        f"job        {job['id']} ({job['kind']}, {job['name']})",
        f"status     {job['status']}" + (f": {job['error']}" if job.get("error") else ""),
        f"workers    {job['resources']['num_workers']} x "
        f"{job['resources']['cpus_per_worker']} CPU"
        + (" + GPU" if job["resources"]["use_gpu"] else ""),
        f"attempt    {attempt['number']}/{job['max_attempts']}: {attempt['state']} "
        f"({attempt['submission_id']})",
    ]
    if attempt.get("dashboard_url"):
        lines.append(f"dashboard  {attempt['dashboard_url']}")
    return "\n".join(lines)


def scheduled_evaluation(value: str) -> dict[str, str]:
    """``PROTOCOL:WHEN`` of ``simclr submit --evaluate`` as an item of the job's ``evaluate``."""
    protocol, _, when = value.partition(":")
    if when not in ("checkpoint", "end") or not protocol:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected PROTOCOL:checkpoint or PROTOCOL:end, e.g. knn:checkpoint"
        )
    return {
        "protocol": protocol,
        **({"every": "checkpoint"} if when == "checkpoint" else {"at": "end"}),
    }


def describe_evaluation(evaluation: dict[str, Any]) -> str:
    what = {"linear": f"{evaluation.get('mode')} linear probe", "knn": "kNN classifier",
            "finetune": "fine-tuning"}.get(evaluation["protocol"], evaluation["protocol"])  # fmt: skip
    lines = [
        f"evaluation {evaluation['id']}: {what} of "
        f"{evaluation['job_id']} at {evaluation['checkpoint']} on {evaluation['dataset']['name']}",
        f"status     {evaluation['status']}"
        + (f": {evaluation['error']}" if evaluation.get("error") else ""),
    ]
    result = evaluation.get("result")
    if result:
        if result["protocol"] == "knn":
            settings = f"k {result['k']}, temperature {result['temperature']}"
        elif result["protocol"] == "finetune":
            settings = (
                f"{100 * result['label_fraction']:.3g} % of the labels, {result['epochs']} epochs"
            )
        else:
            settings = f"{result['mode']}, {result['epochs']} epochs"
        lines.append(
            f"result     top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  ({settings}, "
            f"{result['train_images']} train / {result['test_images']} test images)"
        )
    return "\n".join(lines)


def follow(client: Client, job_id: str, poll_s: float = 1.0) -> dict[str, Any]:
    """A progress bar of the job's steps (loss, learning rate and the monitor's kNN top-1 beside
    it, each as last reported) until it finishes, out of the total its workers report (so with an
    ETA), or, before they report one, the total its config states (``total_steps``)."""
    job = client.job(job_id)
    last_step = 0
    shown: dict[str, float] = {}
    with tqdm(total=total_steps(job), unit="step", desc=job_id, dynamic_ncols=True) as bar:
        while True:
            points = client.metrics(job_id, after_step=last_step)
            if points:
                latest = {p["name"]: p["value"] for p in points if p["step"] == points[-1]["step"]}
                step = points[-1]["step"]
                bar.update(step - last_step)
                last_step = step
                shown.update({k: latest[k] for k in ("loss", "lr", "knn_top1") if k in latest})
                bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
            job = client.job(job_id)
            bar.total = total_steps(job)
            bar.set_description(f"{job_id} [{job['status']}]")
            if job["status"] in TERMINAL:
                return job
            time.sleep(poll_s)


def total_steps(job: dict[str, Any]) -> int | None:
    """The step a job ends at: the newest its workers reported (``progress.total_steps``), else
    the fewer of its config's ``train_steps`` and ``max_steps`` that it sets, else unknown (a run
    of ``epochs`` before its workers have counted the data)."""
    reported = (job.get("progress") or {}).get("total_steps")
    stated = [job["config"].get(name) for name in ("train_steps", "max_steps")]
    return reported or min((steps for steps in stated if steps), default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simclr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "serve", help="run the API (embedded default: SQLite and a local Ray head)"
    )
    p.add_argument("--host")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without SIMCLR_API_TOKEN (logged as a warning)",
    )
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int,
                   help="API processes (default SIMCLR_WORKERS, or one per CPU up to 4)")  # fmt: skip
    p.add_argument("--access-log", action="store_true", help="log a line per request")
    p = commands.add_parser("submit", help="submit a job")
    p.add_argument("kind")
    p.add_argument("--config", required=True, help="YAML or JSON file of the kind's config")
    p.add_argument("--name")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--idempotency-key")
    p.add_argument("--follow", action="store_true", help="show progress until the job finishes")
    p.add_argument(
        "--evaluate", action="append", type=scheduled_evaluation, metavar="PROTOCOL:WHEN",
        help="an evaluation the service runs as its own job: WHEN is 'checkpoint' (every "
        "checkpoint) or 'end' (the last one, once the job succeeded); e.g. knn:checkpoint, "
        "linear:end (repeatable; the protocol's defaults)",
    )  # fmt: skip
    p = commands.add_parser("jobs", help="list jobs")
    p.add_argument("--status")
    p.add_argument("--kind")
    p.add_argument("--limit", type=int, default=50)
    for name, text in (("get", "show a job"), ("cancel", "cancel a job"), ("retry", "retry a job"),
                       ("evals", "a pretraining job's score table: every evaluation of its "
                                 "checkpoints")):  # fmt: skip
        commands.add_parser(name, help=text).add_argument("job_id")
    p = commands.add_parser(
        "eval", help="score a pretraining job's checkpoint: a linear probe or a kNN classifier"
    )
    p.add_argument("job_id")
    p.add_argument("--protocol", default="linear", help="linear (the default), knn or finetune")
    p.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint's name")
    p.add_argument("--dataset", help="data set name (default: the pretraining job's data)")
    p.add_argument("--root", help="the data set's directory")
    p.add_argument("--class-list", help="ImageNet: a file of class folders (ImageNet-100, ...)")
    p.add_argument("--mode", choices=["fast", "augmented"], help="linear: the probe's mode")
    p.add_argument("--epochs", type=int, help="linear: the probe's epochs")
    p.add_argument("--k", type=int, help="knn: neighbours that vote (default 200)")
    p.add_argument("--temperature", type=float, help="knn: votes weigh exp(similarity / T)")
    p.add_argument("--label-fraction", type=float,
                   help="finetune: the fraction of each class labelled (0.01 or 0.1 in the paper)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--wait", action="store_true", help="wait for the result")
    p = commands.add_parser(
        "export", help="a checkpoint's encoder as a file, and its model card beside it (FILE.json)"
    )
    p.add_argument("job_id")
    p.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint's name")
    p.add_argument("--format", default="safetensors",
                   choices=["safetensors", "torchvision", "torchscript"])  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="the file to write")
    p = commands.add_parser("logs", help="print a job's log")
    p.add_argument("job_id")
    p.add_argument("--follow", action="store_true")
    p = commands.add_parser(
        "dirac-gan", help="the Dirac-GAN analysis: eigenvalues and trajectories with and without R1"
    )
    p.add_argument("--gamma", type=float, default=0.3, help="R1 weight (penalty (gamma/2) psi0^2)")
    p.add_argument("--step-size", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", default="dirac_gan.png", help="where to save the plot")
    data = commands.add_parser("data", help="prepare data sets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser(
        "pack", help="pack an ImageFolder tree into Parquet shards for the ray_data loader"
    )
    p.add_argument("source", help="an ImageFolder tree (ImageNet layout: train/ and val/)")
    p.add_argument(
        "destination", help="where the shards and manifest.json go (resumes a partial run)"
    )
    p.add_argument("--shard-mb", type=int, default=256, help="source megabytes per shard")
    p.add_argument("--workers", type=int, default=1, help="processes packing shards in parallel")
    p.add_argument("--class-list", help="a file of class folder names to pack (ImageNet-100, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images' order across shards")
    return parser


def pack_data(args: argparse.Namespace) -> None:
    import logging

    from trainer.data.pack import pack

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    manifest = pack(args.source, args.destination, shard_bytes=args.shard_mb << 20,
                    class_list=args.class_list, workers=args.workers, seed=args.seed)  # fmt: skip
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['images']} images in {len(info['shards'])} shards, "
              f"{info['skipped']} unreadable skipped")  # fmt: skip
    print(f"manifest: {Path(args.destination) / 'manifest.json'}")


def dirac_gan(args: argparse.Namespace) -> None:
    from trainer.generative.dirac_gan import plot

    summary = plot(args.out, args.gamma, args.step_size, args.steps)
    for name, value in summary.items():
        shown = ", ".join(f"{v:.4g}" for v in value) if isinstance(value, list) else f"{value:.4g}"
        print(f"{name}: {shown}")
    print(f"plot: {args.out}")


def _finite_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of a metric whose value is a finite number: a worker's NaN or Infinity comes
    back from the API as a string (``services.schemas``)."""
    return [p for p in points if isinstance(p["value"], int | float) and math.isfinite(p["value"])]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serve(args)
        return
    if args.command == "dirac-gan":
        dirac_gan(args)
        return
    if args.command == "data":
        try:
            pack_data(args)
        except (FileNotFoundError, ValueError) as error:
            sys.exit(f"error: {error}")
        return
    client = Client()
    try:
        if args.command == "submit":
            resources = {"num_workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                         "use_gpu": args.gpu}  # fmt: skip
            job = client.submit(args.kind, read_config(args.config), resources, args.name,
                                args.idempotency_key, args.evaluate)  # fmt: skip
            print(describe(job))
            if args.follow:
                job = follow(client, job["id"])
                print(describe(job))
                sys.exit(0 if job["status"] == "succeeded" else 1)
        elif args.command == "eval":
            dataset = None
            if args.dataset:
                dataset = {k: v for k, v in {"name": args.dataset, "root": args.root,
                                             "class_list": args.class_list}.items() if v}  # fmt: skip
            chosen = {"mode": args.mode, "epochs": args.epochs, "k": args.k,
                      "temperature": args.temperature, "label_fraction": args.label_fraction}  # fmt: skip
            config = {k: v for k, v in chosen.items() if v is not None}
            evaluation = client.evaluate(args.job_id, args.checkpoint, dataset, config,
                                         {"num_workers": args.workers}, args.protocol)  # fmt: skip
            print(describe_evaluation(evaluation))
            if args.wait:
                client.wait(evaluation["id"])
                evaluation = client.evaluation(evaluation["id"])
                print(describe_evaluation(evaluation))
                sys.exit(0 if evaluation["status"] == "succeeded" else 1)
        elif args.command == "jobs":
            rows = [
                {**job, "workers": job["resources"]["num_workers"],
                 "attempt": job["attempts"][-1]["number"], "created": job["created_at"][:19]}
                for job in client.jobs(args.status, args.kind, args.limit)
            ]  # fmt: skip
            print(table(rows, ["id", "kind", "name", "status", "workers", "attempt", "created"]))
        elif args.command == "evals":
            rows = [
                {**e, "dataset": e["dataset"]["name"], **{
                    k: f"{e['result'][k]:.2f}" for k in ("top1", "top5") if e.get("result")}}
                for e in client.evaluations(args.job_id)
            ]  # fmt: skip
            rows.sort(key=lambda row: (row["step"] is None, row["step"], row["protocol"]))
            print(table(rows, ["id", "checkpoint", "step", "protocol", "dataset", "top1", "top5",
                               "status"]))  # fmt: skip
        elif args.command == "get":
            job = client.job(args.job_id)
            print(describe(job))
            if "precision" in job["config"]:  # what the workers chose, once they report
                chosen = _finite_points(client.metrics(args.job_id, name="bf16"))
                ran = ("bf16" if chosen[-1]["value"] else "fp32") if chosen else "not reported yet"
                probed = _finite_points(client.metrics(args.job_id, name="bf16_speedup"))
                probes = {p["step"]: p["value"] for p in probed}  # the last attempt's probe wins
                ratio = probes.get(chosen[-1]["step"]) if chosen else None
                measured = ("" if ratio is None else
                            f"; rank 0's CPU ran bf16 {ratio:.2f}x as fast as fp32")  # fmt: skip
                print(f"precision  {ran} (config: {job['config']['precision']}{measured})")
            print(json.dumps(job["config"], indent=2))
        elif args.command == "export":
            output = Path(args.output)
            card = client.export(args.job_id, args.checkpoint, "card")  # resolves 'latest' once
            checkpoint = json.loads(card)["checkpoint"]
            for path, data in ((output, client.export(args.job_id, checkpoint, args.format)),
                               (Path(f"{output}.json"), card)):  # fmt: skip
                temporary = path.with_name(f".{path.name}.tmp")
                temporary.write_bytes(data)
                temporary.replace(path)
            print(
                f"{output}: the encoder of {args.job_id} at {checkpoint} ({args.format}); "
                f"{output}.json: its model card"
            )
        elif args.command == "logs":
            if args.follow:
                for text in client.follow_logs(args.job_id):
                    print(text, end="", flush=True)
            else:
                print(client.logs(args.job_id)["text"], end="")
        elif args.command == "cancel":
            print(describe(client.cancel(args.job_id)))
        elif args.command == "retry":
            print(describe(client.retry(args.job_id)))
    except ApiError as error:
        sys.exit(f"error: {error.detail}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

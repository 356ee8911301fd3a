"""``rlhf-pairs serve-judge``: load a judge once and serve it over HTTP to every training process and node.

    export RLHF_PAIRS_JUDGE_API_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    rlhf-pairs serve-judge --judge RLHFlow/pair-preference-model-LLaMA3-8B --judge_type pair_lm \
        --host 0.0.0.0 --port 8000 --devices cuda:0,cuda:1
    RLHF_PAIRS_JUDGE_API_KEY=<the same key> rlhf-pairs iterate ... --judge_type remote --judge http://judge-host:8000

Any judge type works, including a class by import path. The server is :mod:`rlhf_pairs.serving` (FastAPI on
uvicorn: the ``serve`` extra); the client is :class:`rlhf_pairs.judges.remote.RemoteJudge`. A host other than
loopback needs an API key (or ``--allow_unauthenticated true``), checked when the arguments are parsed, before the
judge loads.
"""

from __future__ import annotations

import argparse
import logging

from rlhf_pairs.configs import JudgeArguments, ServeJudgeConfig

logger = logging.getLogger(__name__)

RENAMED: dict[str, str] = {}
RECIPES = "serve_judge"
DATACLASSES = (ServeJudgeConfig, JudgeArguments)


def main(script_args: ServeJudgeConfig, judge_args: JudgeArguments) -> None:
    """Load one judge per device and serve them on ``host:port`` until interrupted."""
    from rlhf_pairs.serving import JudgeServer, judge_info, serve

    if judge_args.judge_type == "remote":
        raise ValueError("serve-judge serves a judge it loads itself; judge_type 'remote' would only forward requests")
    judges = [judge_args.load(device) for device in script_args.device_list()]
    info = judge_info(judges[0], judge_args.judge, judge_args.judge_type)
    info["devices"] = [
        str(getattr(judge, "device", device)) for judge, device in zip(judges, script_args.device_list())
    ]
    server = JudgeServer(
        judges,
        info,
        merge_requests=script_args.merge_requests,
        max_batch_rows=script_args.max_batch_rows,
        max_body_bytes=int(script_args.max_body_mb * 1024 * 1024),
    )
    devices, address = ", ".join(info["devices"]), f"http://{script_args.host}:{script_args.port}"
    where = f"{judge_args.judge} ({judge_args.judge_type}) on {devices} at {address}"
    if script_args.api_key:
        logger.info("serve-judge: %s; API key required", where)
    elif script_args.listens_on_loopback():
        logger.info("serve-judge: %s; no API key (loopback only)", where)
    else:
        logger.warning(
            "serve-judge: %s; UNAUTHENTICATED (--allow_unauthenticated): anyone who reaches the port can use the judge",
            where,
        )
    serve(server, script_args.host, script_args.port, script_args.log_level, api_key=script_args.api_key)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import TrlParser

    dataclass_types = DATACLASSES
    if subparsers is not None:
        return subparsers.add_parser("serve-judge", help="Serve a judge over HTTP", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    import sys

    from rlhf_pairs.scripts import command_main

    command_main(sys.modules[__name__])

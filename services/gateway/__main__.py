"""python -m services.gateway: the REST API on uvicorn."""
import logging
import os

import uvicorn

from services.gateway.app import create_app
from shared.service import base_parser


def main() -> None:
    p = base_parser("Gateway: REST API to start, stop and inspect runs.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-dir", default=os.environ.get("RL_LOG_DIR"),
                   help="per-run TensorBoard events, CSV, JSONL and evals (default: $RL_LOG_DIR; none: no files)")
    a = p.parse_args()
    logging.basicConfig(level=a.log_level)
    uvicorn.run(create_app(a.nats, log_dir=a.log_dir), host=a.host, port=a.port, log_level=a.log_level.lower())


if __name__ == "__main__":
    main()

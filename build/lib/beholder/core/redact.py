"""Keep credentials out of what a run writes: Hydra's saved configs, logs, error messages."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hydra.experimental.callback import Callback

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
_SECRET_KEY = re.compile(r"((?:secret|password|passwd|token|access_key|key_id|credential)[\w.-]*['\"]?\s*[:=]\s*)([^\s,'\"}\]]+)", re.I)


def redact(text: str) -> str:
    """``text`` with URL user-info, values of secret-looking keys and the AWS credentials of the
    environment replaced by ``***``."""
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _SECRET_KEY.sub(r"\1***", text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return text


class RedactSecrets(Callback):
    """Rewrites the run's ``.hydra/*.yaml`` (saved just before the job starts) without secrets."""

    def on_job_start(self, config, **kwargs) -> None:
        folder = Path(config.hydra.runtime.output_dir) / config.hydra.output_subdir if config.hydra.output_subdir else None
        if folder is None or not folder.is_dir():
            return
        for path in folder.glob("*.yaml"):
            text = path.read_text()
            clean = redact(text)
            if clean != text:
                path.write_text(clean)

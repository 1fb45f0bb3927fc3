"""`tokentts serve`: an OpenAI-compatible speech server with voices and a web page.

    from tokentts.model import load_model
    from tokentts.serving import ServeConfig, create_app
    app = create_app(ServeConfig(model="path/to/csm"), load_model("path/to/csm"))   # a FastAPI app

Modules: `config` (ServeConfig), `voices` (the on-disk voice store), `worker` (one generation
at a time behind a bounded queue), `streaming` (chunk-by-chunk audio encoding), `service`
(speech and voices without HTTP), `app` (routes), `commands` (the CLI), `static/` (the page).
"""

from tokentts.serving.app import create_app
from tokentts.serving.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]

"""``lvmkit serve``: an HTTP API and a web page over a bank and a run (FastAPI + uvicorn, extra ``lvmkit[serve]``).

service.py     Service: search, next (encode -> predict -> search, timed), info, health; writes no file
predictors.py  RunPredictor (a run's model), Predictors (the one object that picks the answering run),
               SingleRun, load_predictor (the adapter to the training side)
routing.py     RoutingConfig (the --routing YAML) and Router: routes by context length, canary, shadows,
               rolling latencies and the guardrail (no web framework); RoutedRuns, the Predictors it drives
requestlog.py  the opt-in request log (--log-requests DIR) and its reader
replay.py      score logged requests offline with several runs beside the baselines (lvmkit replay)
batcher.py     MicroBatcher: concurrent searches coalesced into one FAISS call
runs.py        the runs dashboard's data from --runs-dir (no path outside it is reachable)
schemas.py     pydantic request / response models and Limits
limits.py      body-size / UTF-8 middleware, the loopback-or-token rule
app.py         create_app(service, token): thin routes, error mapping, the page and offline /docs
static/        the page: index.html, app.js, style.css (no CDN)
"""

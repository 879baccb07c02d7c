"""``p2l serve``: an OpenAI-compatible router and leaderboard service.

- :mod:`p2l_cli.serve.config`: the ``router.yaml`` reader;
- :mod:`p2l_cli.serve.router`: scoring in micro-batches and routing with :mod:`p2l_cli.route`;
- :mod:`p2l_cli.serve.app`: the FastAPI application;
- :mod:`p2l_cli.serve.server`: start-up checks and uvicorn.

Only :mod:`config` and :mod:`router` import without the ``serve`` extra (fastapi, uvicorn).
"""

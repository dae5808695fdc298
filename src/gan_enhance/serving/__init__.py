"""What serving/service.py (the BentoML service) and `make bento` need, one job per module:

- settings: the GAN_ENHANCE_SERVE_* settings (`ServeSettings`)
- errors: `RequestError` and the hints its "fix" texts use
- codec: upload decoding, output encoding, batch validation
- guard: `RequestGuard`, the ASGI middleware that checks requests before BentoML parses them
- model: the served model (BentoML store name, generator folder, GET /model, which API fits it)
- bento: import the MLflow champion, build, export and check the bento (`python -m gan_enhance.serving.bento`)
- local: a served champion on this machine, for the tests and benchmarks
"""

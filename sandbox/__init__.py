"""Local fake servers (sandboxes) for the systems possync talks to, and the tools that run them.

``sandbox.square`` speaks Square's Connect v2 API over real HTTP from a deterministic dataset
(``sandbox.square_data``); ``sandbox.process`` starts it as a subprocess for tests and the demo.
Nothing here is imported by ``workers/`` or ``producers/`` at import time.
"""

__all__: list[str] = []

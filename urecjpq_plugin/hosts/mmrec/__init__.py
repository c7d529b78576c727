"""MMRec host: ``--jpq`` on MMRec's ``main.py`` compresses every model's ID (and optionally feature) tables.

- ``hook``     activate/deactivate: wraps ``get_model``; ``activate_main`` for the patched ``main.py``
- ``cli``      the ``urecjpq-mmrec`` command (MMRec's ``main.py`` from any folder)
- ``tables``   where each MMRec model keeps its user/item/feature tables
- ``runner``   one training run in MMRec's own loop (used by the bench and ``urecjpq tables``)
- ``args``     ``--key=value`` overrides and MMRec's YAML numbers
- ``compat``   the shims MMRec needs on today's stack (``torch_scatter``, ``np.float``, CPU ``.cuda``)
- ``scatter``  the ``torch_scatter`` functions MMRec's models call
"""
from urecjpq_plugin.hosts.mmrec.hook import *  # noqa: F401,F403  (the public API: activate, activate_main, run_one, ...)
from urecjpq_plugin.hosts.mmrec.hook import __all__  # noqa: F401

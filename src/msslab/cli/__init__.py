"""The commands: each module is one console script, a thin Hydra main over the library.

``msslab-train`` (:mod:`.train`), ``msslab-eval`` (:mod:`.eval`), ``msslab-separate``
(:mod:`.separate`), ``msslab-compare`` (:mod:`.compare`), ``msslab-search`` (:mod:`.search`);
``python -m msslab.cli.<name>`` runs the same. No command imports another: what they share
is in the library (``msslab.training``, ``msslab.evaluation``, ``msslab.separation``,
``msslab.report``, ``msslab.search``). A user error (:class:`msslab.errors.MsslabError`) ends
every command the same way: one line ``error: ...`` on stderr and exit code 1.
"""

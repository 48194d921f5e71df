"""Several instances on one store: each instance's name on its responses (``identity``), its heartbeat
row and the list of instances seen lately (``heartbeat``)."""

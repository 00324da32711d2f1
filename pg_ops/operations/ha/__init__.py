"""The HA state machine: one snapshot of a cluster (model.ClusterView, read by observe.py),
one pure decision over it (decide.py), executed by the health tick (operations/health.py,
upkeep actions in act.py) and by the failover and switchover runs (operations/failover.py).
docs/architecture/ha-state-machine.md has the table: situation -> decision -> action."""

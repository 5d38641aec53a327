"""The README example: a 3-node in-memory cluster that elects a leader and
applies commands. Run: python tools/quickstart.py"""

import trio

import traft


class Counter:  # the replicated state machine
    def __init__(self) -> None:
        self.total = 0

    def apply(self, log: traft.Log) -> int:
        self.total += int(log.data)
        return self.total


async def main() -> None:
    network = traft.InmemNetwork()
    ids = ["a", "b", "c"]
    cluster = traft.Configuration(tuple(traft.Server(i, i) for i in ids))
    fsms = {i: Counter() for i in ids}
    async with trio.open_nursery() as nursery:
        nodes: dict[str, traft.Raft] = {}

        async def run(id: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
            store = traft.InmemStore()
            async with traft.open_raft(traft.Config(local_id=id), fsms[id], store, store,
                                       traft.InmemSnapshotStore(),
                                       network.transport(id)) as raft:
                await raft.bootstrap_cluster(cluster)
                nodes[id] = raft
                task_status.started()
                await trio.sleep_forever()

        for id in ids:
            await nursery.start(run, id)
        with trio.fail_after(10):
            while not any(n.state is traft.RaftState.LEADER for n in nodes.values()):
                await trio.sleep(0.1)
        leader = next(n for n in nodes.values() if n.state is traft.RaftState.LEADER)
        print("leader:", leader.leader_id, "term", leader.current_term)
        for n in (1, 2, 3):
            print("apply", n, "->", await leader.apply(str(n).encode()))
        await leader.barrier()
        await trio.sleep(0.5)  # let followers learn the commit
        print("totals:", {id: fsm.total for id, fsm in fsms.items()})
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)

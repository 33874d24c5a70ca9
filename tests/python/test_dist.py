# SPDX-License-Identifier: MIT
# Data-parallel training over c10d/Gloo in real processes on 127.0.0.1, launched as users
# launch btx: torchrun --no-python, and plain processes with torchrun's variables set.
# N ranks on one global batch train as one process does (losses and weights within 1e-5);
# a SIGKILLed rank makes the survivors exit non-zero with a btx::dist error naming them,
# leaves no partial checkpoint, and a rerun resumes bit for bit.
# Run: BTX_DIST_PROBE=build/bin/btx-dist-probe python tests/python/test_dist.py
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import torch
from safetensors.torch import load_file

PROBE = os.environ.get("BTX_DIST_PROBE", "build/bin/btx-dist-probe")
STEPS = 20
TOLERANCE = 1e-5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def result(prefix):
    with open(prefix + ".losses") as f:
        losses = [float.fromhex(line) for line in f if line.strip()]
    return losses, load_file(prefix + ".safetensors")


def torchrun(ranks, *args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--no-python",
           "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), PROBE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def plain_ranks(ranks, *args):
    """btx's own way on one host: the same variables torchrun sets, one process each."""
    port = free_port()
    procs = []
    for r in range(ranks):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(r),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([PROBE, *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


class DataParallelEqualsOneProcess(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-dist-")
        one = os.path.join(cls.tmp, "one")
        r = subprocess.run([PROBE, one, str(STEPS), "6"], capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 0, r.stderr
        cls.one = result(one)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check_ranks(self, ranks):
        prefix = os.path.join(self.tmp, f"ranks{ranks}")
        r = torchrun(ranks, prefix, str(STEPS), "6")
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        losses, weights = result(prefix)
        self.assertEqual(len(losses), STEPS)
        for step, (a, b) in enumerate(zip(losses, self.one[0])):
            self.assertLessEqual(abs(a - b), TOLERANCE, f"step {step + 1}: {a} vs {b}")
        self.assertLess(losses[-1], losses[0])  # it trained
        self.assertEqual(set(weights), set(self.one[1]))
        for name, w in weights.items():
            self.assertLessEqual((w - self.one[1][name]).abs().max().item(), TOLERANCE, name)

    def test_two_ranks(self):
        self.check_ranks(2)

    def test_three_ranks(self):
        self.check_ranks(3)

    def test_uneven_batch_is_refused(self):
        r = torchrun(2, os.path.join(self.tmp, "uneven"), "4", "5")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("does not split evenly over 2", r.stderr)


class KilledRankStopsEveryRank(unittest.TestCase):
    def test_sigkill_of_one_rank_then_resume(self):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "ckpt")
            start = time.monotonic()
            procs = plain_ranks(2, os.path.join(tmp, "killed"), str(STEPS), "6", ckpt, "1", "10")
            outs = [p.communicate(timeout=120) for p in procs]
            elapsed = time.monotonic() - start
            self.assertEqual(procs[1].returncode, -9)  # the killed one
            self.assertEqual(procs[0].returncode, 1, outs[0][1][-2000:])
            self.assertIn("btx::dist: rank 0 of 2 in group 'world'", outs[0][1])
            self.assertLess(elapsed, 60)  # the 20 s timeout, not Gloo's 30 minutes
            # Only complete checkpoints (written by rank 0 at steps 4 and 8), none partial.
            names = sorted(os.listdir(ckpt))
            self.assertEqual(names, ["latest", "step-000004", "step-000008"])
            for d in names[1:]:
                self.assertTrue(os.path.exists(os.path.join(ckpt, d, "state.json")))

            # The rerun resumes from step 8 and ends where an unbroken 2-rank run ends.
            procs = plain_ranks(2, os.path.join(tmp, "resumed"), str(STEPS), "6", ckpt)
            outs = [p.communicate(timeout=240) for p in procs]
            for p, (_, err) in zip(procs, outs):
                self.assertEqual(p.returncode, 0, err[-2000:])
            self.assertIn("resumed from checkpoint", outs[0][1])
            fresh = plain_ranks(2, os.path.join(tmp, "fresh"), str(STEPS), "6",
                                os.path.join(tmp, "ckpt-fresh"))
            for p in fresh:
                _, err = p.communicate(timeout=240)
                self.assertEqual(p.returncode, 0, err[-2000:])
            resumed, fresh_r = result(os.path.join(tmp, "resumed")), result(os.path.join(tmp, "fresh"))
            self.assertEqual(resumed[0], fresh_r[0])
            for name, w in resumed[1].items():
                self.assertTrue(torch.equal(w, fresh_r[1][name]), name)


if __name__ == "__main__":
    unittest.main()

# SPDX-License-Identifier: MIT
# btx-pipeline's BTX topology in real processes over c10d/Gloo on 127.0.0.1 (--quick):
# experts trained by groups of 2 ranks (one job per expert, and one world split into expert
# groups) equal experts trained in one process each; a SIGKILLed rank in one expert's group
# fails only that expert, whose rerun resumes bit for bit; a synchronous stage launched as
# a new user would (torchrun --no-python ... --worker finetune) equals the same stage in one
# process.
# Run: BTX_PIPELINE=build/bin/btx-pipeline python tests/python/test_pipeline_dist.py
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

import torch
from safetensors.torch import load_file

PIPELINE = os.environ.get("BTX_PIPELINE", "build/bin/btx-pipeline")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EXPERTS = ["expert-math", "expert-code", "expert-prose"]


def pipeline(run_dir, *args, config=None, timeout=600):
    cmd = [PIPELINE]
    if config is not None:
        path = os.path.join(os.path.dirname(run_dir), os.path.basename(run_dir) + ".json")
        with open(path, "w") as f:
            json.dump(config, f)
        cmd.append(path)
    cmd += ["--quick", "--run-dir", run_dir, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(run_dir, stage):
    return load_file(os.path.join(run_dir, stage, "model", "model.safetensors"))


def record(run_dir, stage):
    with open(os.path.join(run_dir, stage, "stage.json")) as f:
        return json.load(f)


class ExpertGroupsAndSynchronousStages(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="btx-pipeline-dist-")
        cls.seeded = os.path.join(cls.tmp, "seeded")
        r = pipeline(cls.seeded, "--until", "seed")
        assert r.returncode == 0, r.stderr[-3000:]
        # Experts in one process each, and in 2-rank groups (one job per expert).
        cls.one = cls.fork("one")
        r = pipeline(cls.one, "--until", "experts")
        assert r.returncode == 0, r.stderr[-3000:]
        cls.groups = cls.fork("groups")
        r = pipeline(cls.groups, "--until", "experts", config={"ranks_per_expert": 2})
        assert r.returncode == 0, r.stderr[-3000:]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def fork(cls, name, source=None):
        """A copy of a run folder (the seed and whatever else it has finished)."""
        path = os.path.join(cls.tmp, name)
        shutil.copytree(source or cls.seeded, path)
        return path

    def assert_close(self, run_a, run_b, stage, tolerance=1e-5):
        a, b = weights(run_a, stage), weights(run_b, stage)
        self.assertEqual(set(a), set(b))
        for name in a:
            diff = (a[name] - b[name]).abs().max().item()
            self.assertLessEqual(diff, tolerance, f"{stage}: {name} differs by {diff}")

    def test_expert_groups_equal_one_process(self):
        for stage in EXPERTS:
            self.assertEqual(record(self.groups, stage)["ranks"], 2)
            self.assertEqual(record(self.one, stage)["ranks"], 1)
            self.assert_close(self.one, self.groups, stage)
        # Rank 0 of each group writes; the other rank only logs to its own file.
        self.assertTrue(os.path.exists(os.path.join(self.groups, "expert-code", "log.rank-1.txt")))

    def test_one_world_split_into_expert_groups_equals_one_process(self):
        shared = self.fork("shared")
        r = pipeline(shared, "--until", "experts",
                     config={"ranks_per_expert": 2, "expert_worlds": "shared"})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("started expert-groups (6 ranks", r.stderr)
        for stage in EXPERTS:
            self.assert_close(self.one, shared, stage)

    def test_killed_rank_costs_only_its_expert_and_the_rerun_resumes_bit_for_bit(self):
        run = self.fork("killed")
        fault = {"ranks_per_expert": 2, "fail_expert": 1, "fail_rank": 1, "fail_step": 25,
                 "fail_signal": "kill", "dist_timeout_s": 20}
        r = pipeline(run, "--until", "experts", config=fault)
        self.assertEqual(r.returncode, 1, r.stderr[-3000:])
        self.assertIn("FAILED: expert-code rank 0 exited with code 1", r.stderr)
        self.assertIn("expert-code rank 1 was killed by signal 9", r.stderr)
        self.assertIn("lost rank 1", r.stderr)  # the survivor names the lost rank ...
        self.assertIn("step 26 of stage 'expert-code'", r.stderr)  # ... and what it was doing
        for ok in ("expert-math", "expert-prose"):  # the other expert groups finished
            self.assertEqual(record(run, ok)["ranks"], 2)
        self.assertFalse(os.path.exists(os.path.join(run, "expert-code", "stage.json")))
        ckpt = os.path.join(run, "expert-code", "checkpoints")
        self.assertEqual(sorted(os.listdir(ckpt)), ["latest", "step-000010", "step-000020"])

        r = pipeline(run, "--until", "experts", config={"ranks_per_expert": 2})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("expert-math already finished, skipped", r.stderr)
        self.assertIn("expert-prose already finished, skipped", r.stderr)
        with open(os.path.join(run, "expert-code", "log.txt")) as f:
            self.assertIn("resumed from checkpoint", f.read())
        resumed, unbroken = weights(run, "expert-code"), weights(self.groups, "expert-code")
        for name in unbroken:
            self.assertTrue(torch.equal(resumed[name], unbroken[name]), name)

    def test_torchrun_runs_the_moe_finetune_as_one_process_does(self):
        mixed = self.fork("mixed", self.one)
        r = pipeline(mixed, "--until", "mix", config={"baselines": False})
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        alone = self.fork("alone", mixed)
        # As a new user would, from the README: torchrun --no-python ... --worker finetune.
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--no-python",
                            "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                            "--master-port", str(free_port()), PIPELINE, "--worker", "finetune",
                            "--run-dir", mixed], capture_output=True, text=True, timeout=600,
                           env=ENV)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        r = subprocess.run([PIPELINE, "--worker", "finetune", "--run-dir", alone],
                           capture_output=True, text=True, timeout=600, env=ENV)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual(record(mixed, "btx-top2")["ranks"], 2)
        self.assertEqual(record(alone, "btx-top2")["ranks"], 1)
        self.assert_close(alone, mixed, "btx-top2")  # the MoE's aux loss over the global batch
        self.assertAlmostEqual(record(alone, "btx-top2")["final_loss"],
                               record(mixed, "btx-top2")["final_loss"], places=5)


if __name__ == "__main__":
    unittest.main()

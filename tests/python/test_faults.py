# SPDX-License-Identifier: MIT
"""Isolated expert failures and resume in btx-pipeline --quick (ctest pipeline_faults.*).

(a) Fault injection aborts expert 1 (code) mid-run: the pipeline fails naming it and the
    signal, the other experts finish, the failed one keeps its checkpoints; a rerun without
    the fault resumes it from its last checkpoint and completes the whole pipeline. The
    finished MoE finetune's metrics carry per-layer expert load, and with load balancing on
    no expert's share falls below 1/(4N) (router health).
    With max_restarts the launcher reruns the failed job itself and the one command succeeds.
(b) A real SIGKILL to one running expert process: the others finish, a rerun completes.
    While it runs, a second driver and a second worker for the same expert are refused
    naming the holder; after it, a finished expert whose model was damaged is redone.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

PIPELINE = os.environ["BTX_PIPELINE"]


def pipeline(run_dir, config, *extra, wait=True):
    path = os.path.join(os.path.dirname(run_dir), os.path.basename(run_dir) + "-config.json")
    with open(path, "w") as f:
        json.dump(config, f)  # JSON is YAML
    args = [PIPELINE, path, "--quick", "--run-dir", run_dir, *extra]
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(args, capture_output=True, text=True)
    sys.stderr.write(r.stderr[-1500:])
    return r


def read(path):
    with open(path) as f:
        return f.read()


class Faults(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="btx-faults-")
        self.run_dir = os.path.join(self.tmp, "run")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stage(self, name, *parts):
        return os.path.join(self.run_dir, name, *parts)

    def test_injected_fault_is_isolated_and_resumes_from_its_checkpoint(self):
        base = {"baselines": False, "eval_windows": 4, "math_problems": 5}
        r = pipeline(self.run_dir, dict(base, fail_expert=1, fail_step=25))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("FAILED: expert-code was killed by signal 6", r.stderr)
        for ok in ["expert-math", "expert-prose"]:
            self.assertTrue(os.path.exists(self.stage(ok, "stage.json")), ok)
        self.assertFalse(os.path.exists(self.stage("expert-code", "stage.json")))
        self.assertEqual(read(self.stage("expert-code", "checkpoints", "latest")), "step-000020\n")
        self.assertIn("fault injected at step 25", read(self.stage("expert-code", "log.txt")))

        r = pipeline(self.run_dir, base)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("expert-math already finished, skipped", r.stderr)
        log = read(self.stage("expert-code", "log.txt"))
        self.assertIn("resumed from checkpoint", log)
        self.assertIn("at step 20", log)
        info = json.loads(read(self.stage("expert-code", "stage.json")))
        self.assertEqual(info["resumed_from_step"], 20)
        self.assertEqual(info["steps"], 40)
        for s in ["mix", "btx-top2", "eval"]:
            self.assertTrue(os.path.exists(self.stage(s, "stage.json")), s)
        self.assertFalse(os.path.exists(self.stage("expert-code", "checkpoints")))

        # Router health: per-layer expert load is logged at every log step (one batch's
        # worth, noisy while the fresh router learns) ...
        loads = [json.loads(line) for line in read(self.stage("btx-top2", "metrics.jsonl")).splitlines()]
        loads = [rec["expert_load"] for rec in loads if "expert_load" in rec]
        self.assertTrue(loads)
        for layers in loads:
            self.assertEqual(len(layers), 2)
            for shares in layers:
                self.assertEqual(len(shares), 4)
                self.assertAlmostEqual(sum(shares), 1.0, places=6)
        # ... and on the demo's held-out text, after the finetune with load balancing, no
        # expert's share of a layer (averaged over domains) falls below 1/(4N).
        results = json.loads(read(self.stage("eval", "results.json")))
        routing = next(r["routing"] for r in results if r["name"] == "BTX top2")
        n = 4
        for layer in range(2):
            for e in range(n):
                share = sum(routing[d][layer][e] for d in routing) / len(routing)
                self.assertGreaterEqual(share, 1 / (4 * n), (layer, e, routing))

    def test_max_restarts_finishes_the_failed_expert_in_the_same_run(self):
        # btx's own launcher restarts a failed job (torchrun's --max-restarts for it): the
        # restarted expert resumes from its last checkpoint and the one command succeeds.
        config = {"baselines": False, "fail_expert": 1, "fail_step": 25, "max_restarts": 1}
        r = pipeline(self.run_dir, config, "--until", "experts")
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("FAILED: expert-code was killed by signal 6", r.stderr)
        self.assertIn("restarting 1 failed stage(s) (restart 1 of max_restarts 1)", r.stderr)
        self.assertIn("expert-code finished", r.stderr)
        info = json.loads(read(self.stage("expert-code", "stage.json")))
        self.assertEqual(info["resumed_from_step"], 20)
        for ok in ["expert-math", "expert-prose"]:
            info = json.loads(read(self.stage(ok, "stage.json")))
            self.assertEqual(info["resumed_from_step"], 0, ok)  # not run again

    def test_sigkill_of_one_expert_process_leaves_the_others_to_finish(self):
        config = {"baselines": False, "expert_stage": {"steps": 150, "lr": 2e-3, "warmup": 5}}
        p = pipeline(self.run_dir, config, "--until", "experts", wait=False)
        latest = self.stage("expert-code", "checkpoints", "latest")
        deadline = time.time() + 120
        while not os.path.exists(latest) and time.time() < deadline and p.poll() is None:
            time.sleep(0.02)
        self.assertTrue(os.path.exists(latest), "expert-code never checkpointed")
        victim = None
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = read(f"/proc/{pid}/cmdline").split("\0")
            except OSError:
                continue
            if "--worker" in cmd and "expert" in cmd and self.run_dir in cmd and \
                    cmd[cmd.index("--expert") + 1] == "1":
                victim = int(pid)
        self.assertIsNotNone(victim, "no running expert-code process")
        # While they run: a second driver on the run folder, and a second worker for the
        # same expert (as a hand-started Slurm task would be), are refused at once.
        second = pipeline(self.run_dir, config, "--until", "experts")
        self.assertEqual(second.returncode, 1)
        self.assertIn(f"run folder {self.run_dir} is in use by process {p.pid} on host",
                      second.stderr)
        twin = subprocess.run([PIPELINE, "--worker", "expert", "--expert", "1", "--run-dir",
                               self.run_dir], capture_output=True, text=True, timeout=120)
        self.assertEqual(twin.returncode, 1, twin.stderr)
        self.assertIn(f"stage 'expert-code' of run folder {self.run_dir} is in use by process "
                      f"{victim} on host", twin.stderr)
        os.kill(victim, signal.SIGKILL)
        out, err = p.communicate(timeout=300)
        sys.stderr.write(err[-1500:])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("FAILED: expert-code was killed by signal 9", err)
        for ok in ["expert-math", "expert-prose"]:
            self.assertTrue(os.path.exists(self.stage(ok, "stage.json")), ok)
        self.assertFalse(os.path.exists(self.stage("expert-code", "stage.json")))

        # The killed worker's stage lock died with it: the rerun takes it and resumes.
        r = pipeline(self.run_dir, config, "--until", "experts")
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("resumed from checkpoint", read(self.stage("expert-code", "log.txt")))
        info = json.loads(read(self.stage("expert-code", "stage.json")))
        self.assertGreater(info["resumed_from_step"], 0)

        # A finished expert whose model was damaged afterwards (one byte) is redone, not
        # trusted; the intact ones are skipped.
        model = self.stage("expert-math", "model", "model.safetensors")
        with open(model, "r+b") as f:
            f.seek(-3, os.SEEK_END)
            b = f.read(1)
            f.seek(-3, os.SEEK_END)
            f.write(bytes([b[0] ^ 1]))
        r = pipeline(self.run_dir, config, "--until", "experts")
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn(f"stage 'expert-math' is recorded as finished, but {model} has changed",
                      r.stderr + read(self.stage("expert-math", "log.txt")))
        self.assertIn("expert-prose already finished, skipped", r.stderr)
        self.assertEqual(json.loads(read(self.stage("expert-math", "stage.json")))["steps"], 150)


if __name__ == "__main__":
    unittest.main(verbosity=2)

# SPDX-License-Identifier: MIT
"""Exact resume after SIGKILL (ctest train.resume_after_sigkill_is_bit_identical).

btx-resume-probe trains a tiny Llama (dense, and MoE with the Sample Top-1 router) with a
checkpoint every few steps. One run goes uninterrupted; another is SIGKILLed at a random
moment after some checkpoints exist (twice), then rerun to completion. The final weights
(safetensors bytes) and the per-step loss log must be identical bit for bit.
Needs only the Python standard library.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

PROBE = os.environ["BTX_RESUME_PROBE"]
STEPS, EVERY, SLEEP_MS = 40, 4, 25


def latest_step(ckpt):
    try:
        with open(os.path.join(ckpt, "latest")) as f:
            return int(f.read().strip().split("-")[1])
    except (OSError, ValueError, IndexError):
        return 0


class ResumeAfterSigkill(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="btx-resume-")
        seed = int(os.environ.get("BTX_RESUME_SEED", time.time_ns() % 100000))
        sys.stderr.write(f"random seed {seed} (set BTX_RESUME_SEED to repeat)\n")
        self.rng = random.Random(seed)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def probe(self, kind, ckpt, out):
        return [PROBE, kind, ckpt, out, str(STEPS), str(EVERY), str(SLEEP_MS)]

    def check(self, kind):
        ref = os.path.join(self.tmp, kind + "-ref")
        r = subprocess.run(self.probe(kind, ref + "-ckpt", ref), capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("resumed_from_step=0", r.stdout)

        out = os.path.join(self.tmp, kind + "-killed")
        ckpt = out + "-ckpt"
        kills = []
        for attempt in range(2):
            p = subprocess.Popen(self.probe(kind, ckpt, out), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            start = latest_step(ckpt)
            deadline = time.time() + 60
            while latest_step(ckpt) < start + 2 * EVERY and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(self.rng.uniform(0, 3 * EVERY * SLEEP_MS / 1000))
            self.assertIsNone(p.poll(), "the probe finished before it could be killed")
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills.append(latest_step(ckpt))
        self.assertFalse(os.path.exists(out + ".safetensors"))
        r = subprocess.run(self.probe(kind, ckpt, out), capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        resumed = int(r.stdout.split("resumed_from_step=")[1].split()[0])
        sys.stderr.write(f"{kind}: killed with latest checkpoints {kills}, resumed at {resumed}\n")
        self.assertTrue(0 < resumed < STEPS, r.stdout)
        self.assertIn("resumed from checkpoint", r.stderr)
        # Only complete checkpoints remain, at most keep_checkpoints=2 of them.
        folders = sorted(d for d in os.listdir(ckpt) if d.startswith("step-"))
        self.assertEqual(folders, [f"step-{STEPS - EVERY:06d}", f"step-{STEPS:06d}"])

        with open(ref + ".losses") as a, open(out + ".losses") as b:
            la, lb = a.read().split(), b.read().split()
        self.assertEqual(len(la), STEPS)
        self.assertEqual(la, lb)
        with open(ref + ".safetensors", "rb") as a, open(out + ".safetensors", "rb") as b:
            self.assertTrue(a.read() == b.read(), "final weights differ")

    def test_dense_llama(self):
        self.check("dense")

    def test_moe_llama_with_sample_top1_router(self):
        self.check("moe")


if __name__ == "__main__":
    unittest.main(verbosity=2)

#!/usr/bin/env python3
"""Test stand-in for the adsync driver's PowerShell host (host.ps1): the same JSON-lines
protocol, with scripted cmdlets, so that the process runner is tested against a real child
process on any OS.

Commands:
  Get-ADSyncScheduler            -> one scheduler object; SyncCycleEnabled from the JSON file
                                    named by STAND_IN_STATE (default true)
  Set-ADSyncScheduler            -> stores SyncCycleEnabled in that file, then []
  Get-ADSyncConnectorRunStatus   -> [] (idle)
  Invoke-ADSyncRunProfile        -> sleeps RunProfileName seconds if it is a number, then
                                    [{"Result": "success"}]
  Test-Echo {"Text": t}          -> [t]
  Test-Wrapped                   -> [1, 2] as {"value": [1, 2], "Count": 2}
  Test-Pid                       -> [pid]
  Test-Sleep {"Seconds": s}      -> sleeps, then []
  Test-Exit                      -> writes to stderr and exits with code 7
  Test-Big {"Bytes": n}          -> one string of n characters
  Test-Noise                     -> a non-JSON line, then []
  anything else                  -> {"error": ..., "category": "ObjectNotFound"}
Argument --fail-start: report that the module cannot be loaded, exit 3.
Argument --deny-set: Set-ADSyncScheduler fails with "Access is denied".
"""
import json
import os
import sys
import time


def answer(obj):
    # Pure ASCII, as host.ps1 writes it.
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=True) + "\n")
    sys.stdout.flush()


def load_state():
    path = os.environ.get("STAND_IN_STATE")
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"SyncCycleEnabled": True}


def save_state(state):
    path = os.environ.get("STAND_IN_STATE")
    if path:
        with open(path, "w") as f:
            json.dump(state, f)


def main():
    if "--fail-start" in sys.argv:
        answer({"error": "The specified module 'ADSync' was not loaded", "category": "ResourceUnavailable"})
        return 3
    # Host output a module could write before the first answer: must be skipped.
    sys.stdout.write("WARNING: stand-in starting\n")
    answer({"ready": True, "version": "stand-in"})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        rid, cmd, args = req.get("id"), req.get("command"), req.get("args") or {}
        if cmd == "Get-ADSyncScheduler":
            ok = [{"SyncCycleEnabled": load_state()["SyncCycleEnabled"], "SyncCycleInProgress": False,
                   "StagingModeEnabled": False, "SchedulerSuspended": False,
                   "NextSyncCycleStartTimeInUTC": "/Date(1700000000000)/"}]
        elif cmd == "Set-ADSyncScheduler":
            if "--deny-set" in sys.argv:
                answer({"id": rid, "error": "Access is denied.", "category": "PermissionDenied"})
                continue
            state = load_state()
            state["SyncCycleEnabled"] = bool(args.get("SyncCycleEnabled"))
            save_state(state)
            ok = []
        elif cmd == "Get-ADSyncConnectorRunStatus":
            ok = []
        elif cmd == "Invoke-ADSyncRunProfile":
            try:
                time.sleep(float(args.get("RunProfileName", "0")))
            except ValueError:
                pass
            ok = [{"Result": "success"}]
        elif cmd == "Test-Wrapped":
            # Windows PowerShell 5.1's shape of an extended array.
            answer({"id": rid, "ok": {"value": [1, 2], "Count": 2}})
            continue
        elif cmd == "Test-Echo":
            ok = [args.get("Text")]
        elif cmd == "Test-Pid":
            ok = [os.getpid()]
        elif cmd == "Test-Sleep":
            time.sleep(float(args.get("Seconds", 0)))
            ok = []
        elif cmd == "Test-Exit":
            sys.stderr.write("stand-in: exiting on request\n")
            sys.stderr.flush()
            return 7
        elif cmd == "Test-Big":
            ok = ["x" * int(args.get("Bytes", 0))]
        elif cmd == "Test-Noise":
            sys.stdout.write("this line is not an answer\n")
            ok = []
        else:
            answer({"id": rid, "error": f"The term '{cmd}' is not recognized", "category": "ObjectNotFound"})
            continue
        answer({"id": rid, "ok": ok})
    return 0


if __name__ == "__main__":
    sys.exit(main())

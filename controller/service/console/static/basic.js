// A page with nothing of its own to run (a refusal): the e-stop, alarms and live stream.
import { startShell } from "./shell.js";

startShell().live.start();

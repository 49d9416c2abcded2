"""`callbot phone`: a softphone that calls a running callbot server the way Twilio would.

It places the call with the simulated Twilio caller (`callbot.caller.simulator.TwilioCaller`): the
signed voice webhook, the TwiML's <Connect><Stream>, the signed media websocket, then Media
Streams exactly as Twilio speaks it (mu-law 8 kHz in 20 ms frames, marks echoed after playback,
`clear` honoured). So everything the server does on a real call runs, against a local or a
remote server.

Two ways to talk:

* live: the microphone is the caller and the speaker plays the assistant (sounddevice, optional:
  `pip install "callbot[phone]"`). Talking over the assistant interrupts it, as on a phone.
  Ctrl-C hangs up.
* file: `--input caller.wav` (any rate and channel count) is cut into utterances at silences
  and said one by one, each followed by waiting for the reply (or by `--pause-ms` of silence,
  which talks over a reply still playing); `--script FILE` spells the call out line by line.

`--output call.wav` records the call in stereo (caller left, assistant right). With the admin
login (`--admin-user/--admin-password`, or CALLBOT_ADMIN_USER/CALLBOT_ADMIN_PASSWORD), the
transcript and in-call summaries are shown as the server saves them, from the ticket JSON API,
and the ticket id is printed at hang-up.

The package: `script` (file mode's call plan), `console` (the terminal), `transcript` (the
ticket followed live), `devices` (microphone and speaker), `cli` (the command).
"""

from callbot.phone.cli import PhoneOptions, add_parser, cmd_phone, main, run_phone

__all__ = ["PhoneOptions", "add_parser", "cmd_phone", "main", "run_phone"]

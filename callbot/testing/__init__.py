"""Fakes of the outside world: a fake OpenAI Realtime server, a fake OpenAI HTTP API, synthetic speech.

They power the tests, the offline demo and the load benchmark; the Twilio caller that dials in
is `callbot.caller`. Nothing here is imported by the production call path.
"""

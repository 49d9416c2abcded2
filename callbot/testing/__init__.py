"""Offline stand-ins for the outside world: a fake OpenAI Realtime server, a Twilio caller, synthetic speech.

They power the tests, the offline demo and the load benchmark. Nothing here is imported by the
production call path.
"""

"""The Twilio caller simulator: places a call over Media Streams the way Twilio does.

A product in its own right: `callbot phone` talks through it, `callbot demo` scripts it, and the
load benchmark drives it at scale.
"""

"""callbot: a phone line answered by a speech-to-speech AI agent."""

__version__ = "0.1.0"

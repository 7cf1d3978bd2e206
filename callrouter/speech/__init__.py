"""What callers say while they wait: vosk on the caller's own audio, beside the call path.

``service.SpeechService`` wires it to the call shell (snoop + ExternalMedia per caller,
recognition in a bounded thread pool, text to the ticket and the agent console);
``keywords`` reads the rules that flag callers and raise their priority;
``recognizer`` wraps vosk (models from a path only); ``address`` chooses where the
audio is received (and says when cluster nodes cannot reach it); ``rtp`` and ``limits``
are the small pure parts.
"""

from callrouter.speech.keywords import Hit, KeywordRules, Rule, load_keywords
from callrouter.speech.service import SpeechService, SpeechState

__all__ = ["Hit", "KeywordRules", "Rule", "SpeechService", "SpeechState", "load_keywords"]

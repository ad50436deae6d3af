"""The hub's shared models: the single source of truth for its messages.

JSON Schema and the AsyncAPI document are generated from these models, never written by hand.
"""

from schemas.errors import ErrorCode, ReferralError
from schemas.referral import Channel, Referral, Referrer, ReferrerType, Youth
from schemas.routing import Recipient, RecipientKind, RoutingDecision, RuleOutcome
from schemas.status import ReferralStatus, StatusEvent

__all__ = [
    "Channel", "ErrorCode", "Recipient", "RecipientKind", "Referral", "ReferralError", "ReferralStatus",
    "Referrer", "ReferrerType", "RoutingDecision", "RuleOutcome", "StatusEvent", "Youth",
]

"""Vector bank (vectors + chunk table + manifest) and its FAISS index."""

from lvmkit.bank.bank import VectorBank
from lvmkit.bank.manifest import BankManifest, CorpusInfo, EncoderInfo, check_same_space

__all__ = ["VectorBank", "BankManifest", "CorpusInfo", "EncoderInfo", "check_same_space"]

"""lvmkit: vector-native language modeling, evaluated honestly.

Pipeline (one subpackage per stage, imports point left to right):

    corpus -> encode -> bank -> data -> models -> train -> eval -> diagnose / report
"""

__version__ = "0.1.0"

"""Structure tasks: role-annotated grammars, their splits, and roles from UD treebanks.

    grammar = load_grammar("grammar_a")               # or grammar_b, deep, or any YAML path
    splits = make_splits(seed=0)                      # A train/val/test, B, deep; deduplicated
    ewt = load_ud_splits("path/to/UD_English-EWT")    # train/dev/test as RoleSentence lists

Grammars are data: ``tasks/grammars/README.md`` documents the YAML schema.
"""

from emaprobe.tasks.grammar import Grammar, GrammarError, list_grammars, load_grammar
from emaprobe.tasks.role_data import RoleDataConfig, RoleSplits, make_splits, sample_eval_set
from emaprobe.tasks.sentence import NO_ROLE, ROLES, RoleSentence
from emaprobe.tasks.ud_roles import UDRoleConfig, load_ud_splits

__all__ = [
    "NO_ROLE",
    "ROLES",
    "Grammar",
    "GrammarError",
    "RoleDataConfig",
    "RoleSentence",
    "RoleSplits",
    "UDRoleConfig",
    "list_grammars",
    "load_grammar",
    "load_ud_splits",
    "make_splits",
    "sample_eval_set",
]

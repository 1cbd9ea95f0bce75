"""Role-annotated probabilistic grammars, written as YAML data, and a seeded sampler.

A grammar is a probabilistic context-free grammar whose productions say which clause
they open and which role each noun phrase plays in it. Sampling a grammar gives
``emaprobe.tasks.sentence.RoleSentence`` objects: every token carries its role, the
id and embedding depth of its clause, and the name of that clause's construction.
The three grammars of DESIGN.md ("Grammatical role assignment") ship in
``emaprobe/tasks/grammars/``; ``load_grammar`` also reads any YAML file, so a user
writes a new grammar without touching code.

Glossary
--------
symbol       a rule name or a lexicon category; it starts with an upper-case letter
literal      any body item that starts with anything else ("the", "by", ",")
production   one weighted right-hand side of a rule
clause       opened by a production with ``clause: <construction>``; ids count up
             in the order clauses open (0 = main clause), depth = number of open
             clauses above it (0 = main clause)
head         the body item (``X:head``) that inherits the role given to its parent

Schema
------
The YAML schema, its body items, the rules checked on load and the conventions of the
shipped grammars are written once, in ``emaprobe/tasks/grammars/README.md``.

Use
---
``load_grammar("grammar_a")`` or ``load_grammar("path/to/mine.yaml")`` gives a
``Grammar``; ``g.sample(random.Random(0))`` one ``RoleSentence``,
``g.sample_many(n, seed)`` a list, ``g.iter_samples(seed)`` a stream. Deduplicated
train/test splits live in ``emaprobe.tasks.role_data``.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from emaprobe.tasks.sentence import NO_ROLE, ROLES, RoleSentence

GRAMMAR_DIR = Path(__file__).with_name("grammars")
HEAD = "head"
TOP_KEYS = ("name", "description", "include", "start", "lexicon", "rules")
CATEGORY_KEYS = ("noun", "forms", "words")
PRODUCTION_KEYS = ("body", "weight", "clause")


class GrammarError(ValueError):
    """A grammar file breaks the schema; the message names the file, rule and field."""


@dataclass(frozen=True)
class Item:
    """One body item. kind is "word" (a literal), "lex" (a lexicon category) or "rule"."""

    kind: str
    symbol: str
    form: int = 0  # index into the category's forms
    role: str | None = None  # one of ROLES, HEAD, or None


@dataclass(frozen=True)
class Production:
    body: tuple[Item, ...]
    weight: float
    clause: str | None  # construction name when this production opens a clause


@dataclass(frozen=True)
class Category:
    name: str
    forms: tuple[str, ...]  # () for a category of plain words
    words: tuple[tuple[str, ...], ...]  # one tuple of forms per lexeme (length 1 if no forms)
    noun: bool


@dataclass(frozen=True)
class Grammar:
    """A validated grammar. Build it with ``load_grammar`` or ``parse_grammar``."""

    name: str
    path: str
    start: str
    rules: Mapping[str, tuple[Production, ...]]
    lexicon: Mapping[str, Category]
    description: str = ""
    _cum: Mapping[str, tuple[float, ...]] = field(init=False, repr=False, compare=False)  # cumulative weights

    def __post_init__(self) -> None:
        cum = {}
        for name, prods in self.rules.items():
            total, acc = 0.0, []
            for p in prods:
                total += p.weight
                acc.append(total)
            cum[name] = tuple(acc)
        object.__setattr__(self, "_cum", cum)

    # ---- what the grammar can produce -------------------------------------------
    @property
    def reachable_rules(self) -> frozenset[str]:
        """Rules a derivation from ``start`` can use (an included file may define more)."""
        seen, todo = {self.start}, [self.start]
        while todo:
            for prod in self.rules[todo.pop()]:
                for it in prod.body:
                    if it.kind == "rule" and it.symbol not in seen:
                        seen.add(it.symbol)
                        todo.append(it.symbol)
        return frozenset(seen)

    @property
    def constructions(self) -> frozenset[str]:
        """Names of every construction a sentence of this grammar can open (reachable rules only)."""
        return frozenset(p.clause for r in self.reachable_rules for p in self.rules[r] if p.clause)

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every token the grammar can emit (literals and every form of every word)."""
        words = {w for cat in self.lexicon.values() for lexeme in cat.words for w in lexeme}
        words |= {it.symbol for r in self.reachable_rules for p in self.rules[r] for it in p.body if it.kind == "word"}
        return frozenset(words)

    @property
    def nouns(self) -> frozenset[str]:
        """Every word of a category marked ``noun: true``."""
        return frozenset(w for cat in self.lexicon.values() if cat.noun for lexeme in cat.words for w in lexeme)

    # ---- sampling -----------------------------------------------------------------
    def sample(self, rng: random.Random, max_tokens: int = 256) -> RoleSentence:
        """One sentence drawn with ``rng`` (a ``random.Random``)."""
        return self.sample_with_categories(rng, max_tokens)[0]

    def sample_with_categories(
        self, rng: random.Random, max_tokens: int = 256
    ) -> tuple[RoleSentence, tuple[str | None, ...]]:
        """One sentence, plus the lexicon category of each token (None for literals)."""
        d = _Derivation(self, rng, max_tokens)
        d.expand(self.start, None)
        sent = RoleSentence(
            tokens=tuple(d.tokens),
            roles=tuple(d.roles),
            clause=tuple(d.clause),
            depth=tuple(d.depth),
            construction=tuple(d.construction),
            noun=tuple(c is not None and self.lexicon[c].noun for c in d.categories),
        )
        return sent, tuple(d.categories)

    def sample_many(self, n: int, seed: int | str) -> list[RoleSentence]:
        """``n`` sentences from a ``random.Random(seed)``: the same seed, the same list."""
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def iter_samples(self, seed: int | str) -> Iterator[RoleSentence]:
        """An endless, seeded stream of sentences."""
        rng = random.Random(seed)
        while True:
            yield self.sample(rng)


class _Derivation:
    """The mutable state of one top-down expansion."""

    def __init__(self, grammar: Grammar, rng: random.Random, max_tokens: int) -> None:
        self.g, self.rng, self.max_tokens = grammar, rng, max_tokens
        self.tokens: list[str] = []
        self.roles: list[str] = []
        self.clause: list[int] = []
        self.depth: list[int] = []
        self.construction: list[str] = []
        self.categories: list[str | None] = []
        self.n_clauses = 0
        self.steps = 0

    def _emit(self, word: str, role: str | None, ctx: tuple[int, int, str], category: str | None) -> None:
        if len(self.tokens) >= self.max_tokens:
            raise GrammarError(
                f"{self.g.path}: a sentence from {self.g.start!r} grew past {self.max_tokens} tokens; "
                "lower the weights of recursive productions"
            )
        self.tokens.append(word)
        self.roles.append(role or NO_ROLE)
        self.clause.append(ctx[0])
        self.depth.append(ctx[1])
        self.construction.append(ctx[2])
        self.categories.append(category)

    def expand(self, rule: str, role: str | None, ctx: tuple[int, int, str] | None = None, nesting: int = 0) -> None:
        self.steps += 1
        if self.steps > 50 * self.max_tokens or nesting > 400:
            raise GrammarError(
                f"{self.g.path}: rule {rule!r} keeps expanding (nested {nesting} rules deep); "
                "lower the weights of recursive productions"
            )
        prods = self.g.rules[rule]
        cum = self.g._cum[rule]
        prod = prods[min(bisect.bisect_right(cum, self.rng.random() * cum[-1]), len(prods) - 1)]
        if prod.clause is not None:
            if ctx is None:
                ctx = (0, 0, prod.clause)
            else:
                ctx = (self.n_clauses, ctx[1] + 1, prod.clause)
            self.n_clauses += 1
        assert ctx is not None  # the start rule always opens a clause (checked on load)
        for item in prod.body:
            item_role = role if item.role == HEAD else item.role
            if item.kind == "word":
                self._emit(item.symbol, None, ctx, None)
            elif item.kind == "lex":
                cat = self.g.lexicon[item.symbol]
                lexeme = cat.words[int(self.rng.random() * len(cat.words))]
                self._emit(lexeme[item.form], item_role, ctx, cat.name)
            else:
                self.expand(item.symbol, item_role, ctx, nesting + 1)


# ---- loading ---------------------------------------------------------------------


def list_grammars() -> list[str]:
    """Names of the shipped grammars (YAML files in ``GRAMMAR_DIR`` with a ``start`` rule)."""
    names = []
    for path in sorted(GRAMMAR_DIR.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StrictLoader)  # noqa: S506
        if isinstance(data, dict) and "start" in data:
            names.append(path.stem)
    return names


def resolve_grammar_path(name_or_path: str | Path) -> Path:
    """A shipped grammar's name ("grammar_a") or a path to a YAML file."""
    text = str(name_or_path)
    shipped = GRAMMAR_DIR / f"{text}.yaml"
    if "/" not in text and not text.endswith((".yaml", ".yml")) and shipped.is_file():
        return shipped
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise FileNotFoundError(f"no grammar {text!r}: not a file, and not one of the shipped grammars {list_grammars()}")


def load_grammar(name_or_path: str | Path) -> Grammar:
    """Load and validate a grammar by shipped name or by path; raises GrammarError (a ValueError)."""
    path = resolve_grammar_path(name_or_path)
    data, lexicon, rules, origin = _read_with_includes(path, ())
    return _build(path, data, lexicon, rules, origin)


def parse_grammar(text: str, path: str | Path = "<string>") -> Grammar:
    """Validate a grammar given as YAML text; ``include`` resolves relative to ``path``."""
    path = Path(path)
    data = _parse_yaml(text, path)
    lexicon, rules, origin = _merge_includes(path, data, ())
    return _build(path, data, lexicon, rules, origin)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated key (plain YAML keeps the last one silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _parse_yaml(text: str, path: Path) -> dict:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        line = f":{e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        context = f" {e.context}" if e.context else ""
        raise GrammarError(f"{path}{line}: not valid YAML: {e.problem}{context}") from None
    except yaml.YAMLError as e:
        raise GrammarError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise GrammarError(f"{path}: a grammar file must be a YAML mapping with keys {list(TOP_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(TOP_KEYS))
    if unknown:
        raise GrammarError(f"{path}: unknown top-level field(s) {unknown}; valid fields are {list(TOP_KEYS)}")
    for key in ("lexicon", "rules"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise GrammarError(f"{path}: field {key!r} must be a mapping of names to definitions")
    return data


def _read_with_includes(path: Path, chain: tuple[Path, ...]):
    with open(path, encoding="utf-8") as f:
        data = _parse_yaml(f.read(), path)
    lexicon, rules, origin = _merge_includes(path, data, chain)
    return data, lexicon, rules, origin


def _merge_includes(path: Path, data: dict, chain: tuple[Path, ...]):
    """Merge included files' lexicon and rules under this file's own; remember where each came from."""
    chain = chain + (path.resolve(),)
    includes = data.get("include") or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise GrammarError(f"{path}: field 'include' must be a file name or a list of file names")
    lexicon: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    origin: dict[tuple[str, str], Path] = {}
    for inc in includes:
        inc_path = (path.parent / inc).expanduser()
        if not inc_path.is_file() and (GRAMMAR_DIR / inc).is_file():
            inc_path = GRAMMAR_DIR / inc  # a user grammar anywhere may include a shipped file
        if not inc_path.is_file():
            raise GrammarError(
                f"{path}: field 'include': {inc!r} is neither in {path.parent} nor a shipped file in {GRAMMAR_DIR}"
            )
        if inc_path.resolve() in chain:
            raise GrammarError(f"{path}: field 'include': {inc_path} includes itself")
        _, inc_lex, inc_rules, inc_origin = _read_with_includes(inc_path, chain)
        for section, mine, theirs in (("lexicon", lexicon, inc_lex), ("rules", rules, inc_rules)):
            for name, definition in theirs.items():
                if name in mine and Path(origin[(section, name)]).resolve() == Path(
                        inc_origin[(section, name)]).resolve():
                    continue  # one file reached by two include routes: the same definition, no conflict
                if name in mine:
                    raise GrammarError(
                        f"{path}: {section}.{name} is defined by both {origin[(section, name)]} "
                        f"and {inc_origin[(section, name)]}; define it in one place or override it here"
                    )
                mine[name] = definition
                origin[(section, name)] = inc_origin[(section, name)]
    for section, mine in (("lexicon", lexicon), ("rules", rules)):
        for name, definition in (data.get(section) or {}).items():
            mine[name] = definition
            origin[(section, name)] = path
    return lexicon, rules, origin


def _is_symbol(text: str) -> bool:
    return text[:1].isalpha() and text[:1].isupper()


def _build(path: Path, data: dict, raw_lex: dict, raw_rules: dict, origin: dict) -> Grammar:
    lexicon = {name: _build_category(origin[("lexicon", name)], name, spec) for name, spec in raw_lex.items()}
    for name in raw_rules:
        where = origin[("rules", name)]
        if not isinstance(name, str) or not _is_symbol(name):
            raise GrammarError(f"{where}: rule name {name!r} must start with an upper-case letter")
        if name in lexicon:
            raise GrammarError(f"{where}: rules.{name}: the name is also a lexicon category; rename one")
    rules = {
        name: _build_rule(origin[("rules", name)], name, spec, lexicon, raw_rules) for name, spec in raw_rules.items()
    }
    start = data.get("start")
    if not isinstance(start, str) or start not in rules:
        raise GrammarError(f"{path}: field 'start' must name a rule; got {start!r}, rules are {sorted(rules)}")
    for i, p in enumerate(rules[start]):
        if p.clause is None:
            raise GrammarError(
                f"{origin[('rules', start)]}: rules.{start}[{i}].clause: every production of the start rule "
                "opens the main clause, so it must name its construction"
            )
    _check_roles(rules, lexicon, origin)
    _check_productive(rules, origin)
    name = data.get("name", path.stem)
    if not isinstance(name, str):
        raise GrammarError(f"{path}: field 'name' must be a string")
    description = data.get("description") or ""
    return Grammar(name=name, path=str(path), start=start, rules=rules, lexicon=lexicon, description=str(description))


def _check_word(where: str, word: Any) -> str:
    if not isinstance(word, str) or not word or word != word.strip() or " " in word:
        hint = "" if isinstance(word, str) else " (YAML reads on/off/yes/no/null as non-strings: quote them)"
        raise GrammarError(f"{where}: {word!r} is not a single word{hint}")
    return word


def _as_mapping(where: str, spec: Any, list_key: str, keys: tuple[str, ...], list_of: str) -> dict:
    """A list is shorthand for ``{list_key: list}``; a mapping may use only ``keys``."""
    if isinstance(spec, list):
        spec = {list_key: spec}
    if not isinstance(spec, dict):
        raise GrammarError(f"{where}: must be a list of {list_of} or a mapping with {list(keys)}")
    unknown = sorted(set(map(str, spec)) - set(keys))
    if unknown:
        raise GrammarError(f"{where}: unknown field(s) {unknown}; valid fields are {list(keys)}")
    return spec


def _build_category(path: Path, name: Any, spec: Any) -> Category:
    if not isinstance(name, str) or not _is_symbol(name):
        raise GrammarError(f"{path}: lexicon category {name!r} must start with an upper-case letter")
    spec = _as_mapping(f"{path}: lexicon.{name}", spec, "words", CATEGORY_KEYS, "words")
    noun = spec.get("noun", False)
    if not isinstance(noun, bool):
        raise GrammarError(f"{path}: lexicon.{name}.noun: must be true or false, got {noun!r}")
    forms = spec.get("forms") or []
    if not isinstance(forms, list) or not all(isinstance(f, str) and f for f in forms) or len(set(forms)) != len(forms):
        raise GrammarError(f"{path}: lexicon.{name}.forms: must be a list of distinct form names, got {forms!r}")
    words = spec.get("words")
    if not isinstance(words, list) or not words:
        raise GrammarError(f"{path}: lexicon.{name}.words: must be a non-empty list")
    lexemes = []
    for j, entry in enumerate(words):
        where = f"{path}: lexicon.{name}.words[{j}]"
        if forms:
            if not isinstance(entry, list) or len(entry) != len(forms):
                raise GrammarError(f"{where}: must list {len(forms)} forms {forms}, got {entry!r}")
            lexemes.append(tuple(_check_word(where, w) for w in entry))
        else:
            lexemes.append((_check_word(where, entry),))
    return Category(name=name, forms=tuple(forms), words=tuple(lexemes), noun=noun)


def _build_rule(
    path: Path, name: str, spec: Any, lexicon: dict[str, Category], raw_rules: dict
) -> tuple[Production, ...]:
    if not isinstance(spec, list) or not spec:
        raise GrammarError(f"{path}: rules.{name}: must be a non-empty list of productions")
    prods = []
    for i, p in enumerate(spec):
        where = f"{path}: rules.{name}[{i}]"
        p = _as_mapping(where, p, "body", PRODUCTION_KEYS, "items")
        weight = p.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 or weight == float("inf"):
            raise GrammarError(f"{where}.weight: must be a positive number, got {weight!r}")
        clause = p.get("clause")
        if clause is not None and (not isinstance(clause, str) or not clause):
            raise GrammarError(f"{where}.clause: must be a construction name, got {clause!r}")
        body = p.get("body")
        if not isinstance(body, list):
            raise GrammarError(f"{where}.body: must be a list of items, got {body!r}")
        items = tuple(_parse_item(f"{where}.body[{k}]", it, lexicon, raw_rules) for k, it in enumerate(body))
        if sum(it.role == HEAD for it in items) > 1:
            raise GrammarError(f"{where}.body: more than one ':head' item; a role goes to exactly one noun")
        prods.append(Production(body=items, weight=float(weight), clause=clause))
    return tuple(prods)


def _parse_item(where: str, text: Any, lexicon: dict[str, Category], raw_rules: dict) -> Item:
    if not isinstance(text, str) or not text or " " in text:
        raise GrammarError(
            f"{where}: {text!r} is not an item (a word, Symbol, Cat.form, Sym:ROLE or Sym:head; "
            "quote YAML-special words)"
        )
    if not _is_symbol(text):
        if text.rpartition(":")[2] in (*ROLES, HEAD) and text.rpartition(":")[0]:
            raise GrammarError(f"{where}: {text!r}: only symbols (upper-case initial) take a role or ':head'")
        return Item(kind="word", symbol=text)
    symbol, colon, annot = text.partition(":")
    role = None
    if colon:
        if annot != HEAD and annot not in ROLES:
            raise GrammarError(
                f"{where}: unknown annotation {annot!r} in {text!r}; choose one of {sorted(ROLES) + [HEAD]}"
            )
        role = annot
    symbol, dot, form = symbol.partition(".")
    if symbol in lexicon:
        cat = lexicon[symbol]
        if cat.forms and not dot:
            raise GrammarError(
                f"{where}: category {symbol!r} has forms {list(cat.forms)}; write e.g. {symbol}.{cat.forms[0]}"
            )
        if dot and form not in cat.forms:
            raise GrammarError(f"{where}: category {symbol!r} has no form {form!r}; choose one of {list(cat.forms)}")
        return Item(kind="lex", symbol=symbol, form=cat.forms.index(form) if dot else 0, role=role)
    if symbol in raw_rules:
        if dot:
            raise GrammarError(f"{where}: {text!r}: only lexicon categories have forms; {symbol!r} is a rule")
        return Item(kind="rule", symbol=symbol, role=role)
    raise GrammarError(
        f"{where}: unknown symbol {symbol!r}; rules are {sorted(raw_rules)}, lexicon categories are {sorted(lexicon)} "
        "(literal words start with a lower-case letter)"
    )


def _check_roles(rules: dict[str, tuple[Production, ...]], lexicon: dict[str, Category], origin: dict) -> None:
    """Every role-annotated item must lead, along ':head' items, to exactly one noun."""
    # The greatest fixpoint: start from every rule with one head per production and drop
    # those that hand the role to a non-carrier, so recursive heads (NP -> Adj NP:head)
    # count; _check_productive then ensures each head chain ends, at a noun.
    carriers = {name for name, cat in lexicon.items() if cat.noun}
    carriers |= {
        name for name, prods in rules.items() if all(sum(it.role == HEAD for it in p.body) == 1 for p in prods)
    }
    changed = True
    while changed:
        changed = False
        for name, prods in rules.items():
            if name in carriers and not all(it.symbol in carriers for p in prods for it in p.body if it.role == HEAD):
                carriers.discard(name)
                changed = True
    for name, prods in rules.items():
        for i, p in enumerate(prods):
            for k, it in enumerate(p.body):
                if it.role is not None and it.symbol not in carriers:
                    raise GrammarError(
                        f"{origin[('rules', name)]}: rules.{name}[{i}].body[{k}]: {it.symbol!r} gets a role "
                        f"({it.role}) but does not lead to a noun: it must be a category with 'noun: true', or a rule "
                        "every production of which has exactly one ':head' item leading to a noun"
                    )


def _check_productive(rules: dict[str, tuple[Production, ...]], origin: dict) -> None:
    """Every rule must be able to finish (derive a finite token string)."""
    done: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, prods in rules.items():
            if name not in done and any(all(it.kind != "rule" or it.symbol in done for it in p.body) for p in prods):
                done.add(name)
                changed = True
    stuck = sorted(set(rules) - done)
    if stuck:
        raise GrammarError(
            f"{origin[('rules', stuck[0])]}: rules.{stuck[0]}: can never finish (every production recurses); "
            f"rules that cannot finish: {stuck}"
        )

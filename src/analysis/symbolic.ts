// Symbolic dimensions: integer polynomials over named atoms (`batch`, `seq`, or an opaque expression
// such as `floor((W+1)/2)` where the arithmetic leaves polynomials). Dims stay symbolic through
// Shape/Gather/Concat/Reshape chains, and a product like `batch*seq` divides back exactly.

/** One monomial: sorted atom names (repeated for powers) times an integer coefficient. */
interface Term {
  atoms: string[];
  coef: number;
}

const keyOf = (atoms: readonly string[]) => atoms.join('\u00b7');

export class Expr {
  private constructor(private readonly terms: ReadonlyMap<string, Term>) {}

  static num(n: number): Expr {
    return Expr.fromTerms(n === 0 ? [] : [{ atoms: [], coef: n }]);
  }

  static atom(name: string): Expr {
    return Expr.fromTerms([{ atoms: [name], coef: 1 }]);
  }

  private static fromTerms(terms: Iterable<Term>): Expr {
    const map = new Map<string, Term>();
    for (const t of terms) {
      const atoms = [...t.atoms].sort();
      const key = keyOf(atoms);
      const coef = (map.get(key)?.coef ?? 0) + t.coef;
      if (coef === 0) map.delete(key);
      else map.set(key, { atoms, coef });
    }
    return new Expr(map);
  }

  private termList(): Term[] {
    return [...this.terms.values()];
  }

  /** The number, when the expression has no atoms. */
  get constant(): number | undefined {
    if (this.terms.size === 0) return 0;
    if (this.terms.size === 1) {
      const only = this.termList()[0];
      if (only.atoms.length === 0) return only.coef;
    }
    return undefined;
  }

  get isConstant(): boolean {
    return this.constant !== undefined;
  }

  /** The atom name, when the expression is exactly one atom. */
  get atomName(): string | undefined {
    const list = this.termList();
    return list.length === 1 && list[0].coef === 1 && list[0].atoms.length === 1 ? list[0].atoms[0] : undefined;
  }

  /** Every coefficient positive and some atom present: at least 1 since dims are at least 1. */
  get isPositiveSymbolic(): boolean {
    const list = this.termList();
    return !this.isConstant && list.every((t) => t.coef > 0);
  }

  atoms(): Set<string> {
    return new Set(this.termList().flatMap((t) => t.atoms));
  }

  add(other: Expr | number): Expr {
    return Expr.fromTerms([...this.termList(), ...lift(other).termList()]);
  }

  sub(other: Expr | number): Expr {
    return this.add(lift(other).scale(-1));
  }

  scale(k: number): Expr {
    return Expr.fromTerms(this.termList().map((t) => ({ atoms: t.atoms, coef: t.coef * k })));
  }

  mul(other: Expr | number): Expr {
    const o = lift(other);
    const out: Term[] = [];
    for (const a of this.termList()) for (const b of o.termList()) out.push({ atoms: [...a.atoms, ...b.atoms], coef: a.coef * b.coef });
    return Expr.fromTerms(out);
  }

  /** `this / other` when it divides exactly (polynomial long division), else undefined. */
  divExact(other: Expr | number): Expr | undefined {
    const o = lift(other);
    const divisor = o.termList();
    if (divisor.length === 0) return undefined;
    if (divisor.length === 1) return this.divByMonomial(divisor[0]);
    const lead = leading(divisor);
    let quotient = Expr.num(0);
    let rest: Expr = this;
    for (let step = 0; step < 64; step++) {
      if (rest.terms.size === 0) return quotient;
      const t = Expr.fromTerms([leading(rest.termList())]).divByMonomial(lead);
      if (!t) return undefined;
      quotient = quotient.add(t);
      rest = rest.sub(t.mul(o));
    }
    return undefined;
  }

  private divByMonomial(d: Term): Expr | undefined {
    const out: Term[] = [];
    for (const t of this.termList()) {
      if (t.coef % d.coef !== 0) return undefined;
      const rest = [...t.atoms];
      for (const a of d.atoms) {
        const at = rest.indexOf(a);
        if (at < 0) return undefined;
        rest.splice(at, 1);
      }
      out.push({ atoms: rest, coef: t.coef / d.coef });
    }
    return Expr.fromTerms(out);
  }

  /** Integer floor division; exact quotients stay polynomials, others become an opaque atom. */
  floorDiv(other: Expr | number): Expr {
    const o = lift(other);
    const a = this.constant;
    const b = o.constant;
    if (a !== undefined && b !== undefined && b !== 0) return Expr.num(Math.floor(a / b));
    const exact = this.divExact(o);
    if (exact) return exact;
    return opaque('floor', this, o);
  }

  /** Ceiling division, as floor((a + b - 1) / b). */
  ceilDiv(other: Expr | number): Expr {
    const o = lift(other);
    const a = this.constant;
    const b = o.constant;
    if (a !== undefined && b !== undefined && b !== 0) return Expr.num(Math.ceil(a / b));
    const exact = this.divExact(o);
    if (exact) return exact;
    return opaque('ceil', this, o);
  }

  equals(other: Expr | number): boolean {
    return this.sub(other).terms.size === 0;
  }

  /**
   * Value under a binding of atoms to numbers (an opaque atom such as floor((W-1)/(2)) is computed
   * from its parts when it is not bound itself); undefined when an atom stays unbound.
   */
  evaluate(binding: ReadonlyMap<string, number>): number | undefined {
    let sum = 0;
    for (const t of this.termList()) {
      let product = t.coef;
      for (const a of t.atoms) {
        const v = binding.get(a) ?? evaluateOpaque(a, binding);
        if (v === undefined) return undefined;
        product *= v;
      }
      sum += product;
    }
    return sum;
  }

  toString(): string {
    const list = this.termList();
    if (list.length === 0) return '0';
    const ordered = [...list].sort((x, y) => y.atoms.length - x.atoms.length || keyOf(x.atoms).localeCompare(keyOf(y.atoms)));
    return ordered
      .map((t, i) => {
        const sign = t.coef < 0 ? '-' : i > 0 ? '+' : '';
        const mag = Math.abs(t.coef);
        const body = t.atoms.length === 0 ? `${mag}` : `${mag === 1 ? '' : `${mag}*`}${t.atoms.join('*')}`;
        return `${sign}${body}`;
      })
      .join('');
  }
}

/** Opaque atoms by name: integer divisions that do not simplify, kept so they can still be evaluated. */
const OPAQUE = new Map<string, { round: 'floor' | 'ceil'; a: Expr; b: Expr }>();

function opaque(round: 'floor' | 'ceil', a: Expr, b: Expr): Expr {
  const name = `${round}((${a})/(${b}))`;
  OPAQUE.set(name, { round, a, b });
  return Expr.atom(name);
}

function evaluateOpaque(name: string, binding: ReadonlyMap<string, number>): number | undefined {
  const def = OPAQUE.get(name);
  if (!def) return undefined;
  const a = def.a.evaluate(binding);
  const b = def.b.evaluate(binding);
  if (a === undefined || b === undefined || b === 0) return undefined;
  return def.round === 'floor' ? Math.floor(a / b) : Math.ceil(a / b);
}

/** The greatest term in graded lexicographic order (degree first, then atom names). */
function leading(terms: Term[]): Term {
  return terms.reduce((best, t) => {
    if (t.atoms.length !== best.atoms.length) return t.atoms.length > best.atoms.length ? t : best;
    return keyOf(t.atoms) > keyOf(best.atoms) ? t : best;
  });
}

function lift(x: Expr | number): Expr {
  return typeof x === 'number' ? Expr.num(x) : x;
}

/** A dimension: a symbolic expression, or undefined when nothing is known about it. */
export type SymDim = Expr | undefined;

export function formatSymShape(shape: readonly SymDim[] | undefined): string {
  if (!shape) return '?';
  return `[${shape.map((d) => d?.toString() ?? '?').join(', ')}]`;
}

export function sameDim(a: SymDim, b: SymDim): boolean {
  return a !== undefined && b !== undefined && a.equals(b);
}

/** Product of dims, or undefined if any is unknown. */
export function product(dims: readonly SymDim[]): Expr | undefined {
  let out = Expr.num(1);
  for (const d of dims) {
    if (!d) return undefined;
    out = out.mul(d);
  }
  return out;
}

// k6 provides `console` (its output goes to k6's log); @types/k6 does not
// declare it, and the DOM library would bring in far more than k6 has.
declare var console: {
  log(...data: unknown[]): void;
  info(...data: unknown[]): void;
  warn(...data: unknown[]): void;
  error(...data: unknown[]): void;
  debug(...data: unknown[]): void;
};

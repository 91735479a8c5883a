// Module hooks for @caravan/descriptors 0.2.0 only. Its dist/src is tsc's ES module output with
// extensionless relative imports ("./descriptors"), in a package without "type": "module", so
// neither require() nor import loads it as published ("Cannot find module .../dist/src/descriptors").
// Here a relative import from inside that package that does not resolve is retried with ".js",
// and its dist/src files are loaded as ES modules. Its code is run as published, unchanged.

const PKG = "/node_modules/@caravan/descriptors/";

export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (err) {
    if (specifier.startsWith(".") && context.parentURL && context.parentURL.includes(PKG)) {
      return next(`${specifier}.js`, context);
    }
    throw err;
  }
}

export async function load(url, context, next) {
  if (url.includes(`${PKG}dist/src/`)) return next(url, { ...context, format: "module" });
  return next(url, context);
}

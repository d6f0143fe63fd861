// A user name is never a path (invariant 5): it must look like an adduser name
// before it comes near the file system.
export const NAME_RE = /^[a-z_][a-z0-9_-]*$/;
export const NAME_MAX = 32;

export function isValidName(name: string): boolean {
  return name.length <= NAME_MAX && NAME_RE.test(name);
}

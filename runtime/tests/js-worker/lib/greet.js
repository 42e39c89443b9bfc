export function greet(greeting) {
  return `${greeting} from a JS worker`;
}

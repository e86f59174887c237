const total = Array.from({ length: 100 }, (_, i) => i + 1).reduce((a, b) => a + b, 0);
const major = process.versions.node.split(".")[0];
console.log(`hello from node ${major}: ${total}`);

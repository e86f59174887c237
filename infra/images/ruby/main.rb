major_minor = RUBY_VERSION.split(".").first(2).join(".")
puts "hello from ruby #{major_minor}: #{(1..100).sum}"

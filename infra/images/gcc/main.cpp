#include <iostream>
#include <numeric>
#include <vector>

int main() {
    std::vector<int> v(100);
    std::iota(v.begin(), v.end(), 1);
    std::cout << "hello from c++ (g++ " << __GNUC__ << "): " << std::accumulate(v.begin(), v.end(), 0) << "\n";
    return 0;
}
